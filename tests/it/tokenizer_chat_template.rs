//! Chat templates: loading from each place a model directory keeps them, and rendering that equals transformers'
//! `apply_chat_template(..., tokenize=False)` on the fixture templates (Qwen2-VL-style with images, SmolLM2-style
//! ChatML, Qwen3-style with tools and reasoning), plus Python's `json.dumps` and float `repr`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use minijinja::Value;
use serde::Deserialize;
use umrank::models::text::chat_template::{
    Chat, ChatMessage, ChatTemplateError, ChatTemplates, ContentPart, DEFAULT_TEMPLATE,
    TOOL_USE_TEMPLATE,
};
use umrank::models::text::pyjson::float_repr;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn template_source(name: &str) -> String {
    fs::read_to_string(fixtures().join("templates").join(format!("{name}.jinja"))).unwrap()
}

#[derive(Deserialize)]
struct References {
    templates: BTreeMap<String, Vec<TemplateCase>>,
    python: PythonReferences,
}

/// Messages, tools and keyword arguments are read as template values, which keep the key order of the file (and so
/// of the Python dicts they were written from).
#[derive(Deserialize)]
struct TemplateCase {
    messages: Value,
    tools: Option<Value>,
    add_generation_prompt: bool,
    #[serde(default)]
    kwargs: Option<Value>,
    rendered: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct PythonReferences {
    float_repr: Vec<FloatRepr>,
    value: Value,
    renders: Vec<PythonRender>,
}

#[derive(Deserialize)]
struct FloatRepr {
    bits: String,
    repr: String,
}

#[derive(Deserialize)]
struct PythonRender {
    template: String,
    rendered: String,
}

fn references() -> References {
    let text = fs::read_to_string(fixtures().join("references.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The directory whose loaded template is each fixture template (the loader is checked to find them there).
fn directory_of(template: &str) -> PathBuf {
    match template {
        "qwen2_vl" => fixtures().join("qwen2_prefix"),
        "chatml_smol" => fixtures().join("layouts/config_string"),
        "qwen3_text" => fixtures().join("layouts/jinja_file"),
        other => panic!("no directory holds template {other}"),
    }
}

fn chat_for(case: &TemplateCase) -> Chat {
    let messages = serde_json::to_string(&case.messages).unwrap();
    let mut chat = Chat::from_json(&messages)
        .unwrap()
        .with_generation_prompt(case.add_generation_prompt);
    if let Some(tools) = &case.tools {
        chat = chat
            .with_tools_json(&serde_json::to_string(tools).unwrap())
            .unwrap();
    }
    if let Some(kwargs) = &case.kwargs {
        for key in kwargs.try_iter().unwrap() {
            let value = kwargs.get_item(&key).unwrap();
            chat = chat.with_kwarg(key.as_str().unwrap(), value);
        }
    }
    chat
}

#[test]
fn renderings_match_transformers() {
    let references = references();
    assert_eq!(references.templates.len(), 3);
    for (name, cases) in &references.templates {
        let templates = ChatTemplates::from_dir(&directory_of(name)).unwrap();
        assert_eq!(
            templates.select(None, false).unwrap().source(),
            template_source(name)
        );
        for (index, case) in cases.iter().enumerate() {
            let chat = chat_for(case);
            let template = templates.select(Some(DEFAULT_TEMPLATE), false).unwrap();
            match (&case.rendered, &case.error) {
                (Some(expected), None) => {
                    let rendered = template
                        .render(&chat)
                        .unwrap_or_else(|err| panic!("{name} case {index}: {err}"));
                    assert_eq!(&rendered, expected, "{name} case {index}");
                }
                (None, Some(message)) => {
                    let err = template.render(&chat).unwrap_err();
                    assert!(matches!(err, ChatTemplateError::Render { .. }));
                    assert!(
                        err.to_string().contains(message.as_str()),
                        "{name} case {index}: {err}"
                    );
                }
                _ => panic!("{name} case {index} has neither a rendering nor an error"),
            }
        }
    }
}

#[test]
fn typed_messages_render_like_json_messages() {
    let templates = ChatTemplates::from_dir(&directory_of("qwen2_vl")).unwrap();
    let typed = Chat::new(&[
        ChatMessage::text("system", "You rank images."),
        ChatMessage::parts(
            "user",
            vec![
                ContentPart::Text("First ".into()),
                ContentPart::Image,
                ContentPart::Text(" then ".into()),
                ContentPart::Video,
            ],
        ),
    ])
    .with_generation_prompt(true);
    let json = Chat::from_json(
        r#"[{"role": "system", "content": "You rank images."},
            {"role": "user", "content": [{"type": "text", "text": "First "}, {"type": "image"},
                                         {"type": "text", "text": " then "}, {"type": "video"}]}]"#,
    )
    .unwrap()
    .with_generation_prompt(true);
    let rendered = templates.render(&typed).unwrap();
    assert_eq!(rendered, templates.render(&json).unwrap());
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou rank images.<|im_end|>\n<|im_start|>user\nFirst \
         <|vision_start|><|image_pad|><|vision_end|> then <|vision_start|><|video_pad|><|vision_end|><|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn null_message_fields_are_dropped_as_transformers_drops_them() {
    let templates = ChatTemplates::from_dir(&directory_of("qwen3_text")).unwrap();
    let with_null = Chat::from_json(
        r#"[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", "tool_calls": null}]"#,
    )
    .unwrap();
    let without = Chat::from_json(
        r#"[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]"#,
    )
    .unwrap();
    assert_eq!(
        templates.render(&with_null).unwrap(),
        templates.render(&without).unwrap()
    );
}

#[test]
fn layouts_load_the_template_transformers_loads() {
    let layouts = fixtures().join("layouts");

    let string = ChatTemplates::from_dir(&layouts.join("config_string")).unwrap();
    assert_eq!(string.names().collect::<Vec<_>>(), [DEFAULT_TEMPLATE]);
    assert!(string.path().ends_with("tokenizer_config.json"));

    // chat_template.jinja wins over the tokenizer_config.json next to it (generator checks transformers agrees).
    let jinja = ChatTemplates::from_dir(&layouts.join("jinja_file")).unwrap();
    assert_eq!(
        jinja.select(None, false).unwrap().source(),
        template_source("qwen3_text")
    );
    assert!(jinja.path().ends_with("chat_template.jinja"));

    let processor = ChatTemplates::from_dir(&layouts.join("processor_json")).unwrap();
    assert_eq!(
        processor.select(None, false).unwrap().source(),
        template_source("qwen2_vl")
    );
    assert!(processor.path().ends_with("chat_template.json"));

    let named = ChatTemplates::from_dir(&layouts.join("config_list")).unwrap();
    assert_eq!(
        named.names().collect::<Vec<_>>(),
        [DEFAULT_TEMPLATE, TOOL_USE_TEMPLATE]
    );
    assert_eq!(
        named.select(None, false).unwrap().source(),
        template_source("chatml_smol")
    );
    assert_eq!(
        named.select(None, true).unwrap().source(),
        template_source("qwen3_text")
    );
    assert_eq!(
        named.select(Some(TOOL_USE_TEMPLATE), false).unwrap().name(),
        TOOL_USE_TEMPLATE
    );
    let err = named.select(Some("rag"), false).unwrap_err();
    assert!(matches!(err, ChatTemplateError::UnknownName { .. }));
    assert!(
        err.to_string().contains("\"rag\"") && err.to_string().contains("tool_use"),
        "{err}"
    );

    let err = ChatTemplates::from_dir(&layouts.join("none")).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Missing { .. }), "{err}");
}

#[test]
fn tools_pick_the_tool_use_template() {
    let named = ChatTemplates::from_dir(&fixtures().join("layouts/config_list")).unwrap();
    let plain = Chat::from_json(r#"[{"role": "user", "content": "hi"}]"#).unwrap();
    let with_tools = plain
        .clone()
        .with_tools_json(r#"[{"type": "function", "function": {"name": "f"}}]"#)
        .unwrap();
    assert!(named.render(&plain).unwrap().contains("named SmolLM"));
    let rendered = named.render(&with_tools).unwrap();
    assert!(
        rendered.contains(
            r#"<tools>
{"type": "function", "function": {"name": "f"}}
</tools>"#
        ),
        "{rendered}"
    );
}

#[test]
fn special_tokens_of_the_config_reach_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"{"chat_template": "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token is defined }}|{{ messages[0].content }}",
                     "bos_token": {"content": "<s>", "special": true}, "eos_token": "</s>", "pad_token": "</s>",
                     "unk_token": null}"#;
    fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    let templates = ChatTemplates::from_dir(dir.path()).unwrap();
    let chat = Chat::new(&[ChatMessage::text("user", "x")]);
    assert_eq!(templates.render(&chat).unwrap(), "<s>|</s>|</s>|False|x");
    // A keyword argument overrides a special token, as in transformers.
    let chat = chat.with_kwarg("eos_token", Value::from("<end>"));
    assert_eq!(templates.render(&chat).unwrap(), "<s>|<end>|</s>|False|x");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenizer_config.json");

    fs::write(&config, "{not json").unwrap();
    let err = ChatTemplates::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Json { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");

    fs::write(&config, r#"{"chat_template": 7}"#).unwrap();
    let err = ChatTemplates::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            ChatTemplateError::Field {
                field: "chat_template",
                ..
            }
        ),
        "{err}"
    );

    fs::write(
        &config,
        r#"{"chat_template": "{% for m in messages %}{{ m.role }"}"#,
    )
    .unwrap();
    let err = ChatTemplates::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("chat_template:1"), "{err}");

    fs::write(
        &config,
        r#"{"chat_template": "{{ messages[0].content }}", "eos_token": 5}"#,
    )
    .unwrap();
    let err = ChatTemplates::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            ChatTemplateError::Field {
                field: "eos_token",
                ..
            }
        ),
        "{err}"
    );

    fs::write(&config, r#"{"chat_template": "{{ messages[0].content }}"}"#).unwrap();
    let templates = ChatTemplates::from_dir(dir.path()).unwrap();
    assert!(matches!(
        templates.render(&Chat::new(&[])),
        Err(ChatTemplateError::EmptyChat)
    ));
    assert!(matches!(
        Chat::from_json(r#"{"role": "user"}"#),
        Err(ChatTemplateError::MessageShape { .. })
    ));
    assert!(matches!(
        Chat::from_json(r#"[{"role": "user"}, 3]"#),
        Err(ChatTemplateError::MessageShape { .. })
    ));
    assert!(matches!(
        Chat::from_json("[{"),
        Err(ChatTemplateError::InputJson {
            what: "messages",
            ..
        })
    ));
    let chat = Chat::new(&[ChatMessage::text("user", "x")]);
    assert!(matches!(
        chat.with_tools_json("[1,"),
        Err(ChatTemplateError::InputJson { what: "tools", .. })
    ));
}

#[test]
fn floats_print_as_python_repr() {
    let references = references();
    assert!(references.python.float_repr.len() > 15);
    for case in &references.python.float_repr {
        let bits = u64::from_str_radix(&case.bits, 16).unwrap();
        assert_eq!(
            float_repr(f64::from_bits(bits)),
            case.repr,
            "bits {}",
            case.bits
        );
    }
    assert_eq!(float_repr(f64::NAN), "nan");
}

#[test]
fn tojson_and_python_methods_match_jinja2() {
    let references = references();
    assert_eq!(references.python.renders.len(), 10);
    let dir = tempfile::tempdir().unwrap();
    for case in &references.python.renders {
        let config = serde_json::json!({ "chat_template": case.template });
        fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let templates = ChatTemplates::from_dir(dir.path()).unwrap();
        let chat = Chat::new(&[ChatMessage::text("user", "x")])
            .with_kwarg("value", references.python.value.clone());
        assert_eq!(
            templates.render(&chat).unwrap(),
            case.rendered,
            "{}",
            case.template
        );
    }
}
