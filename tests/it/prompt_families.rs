//! Prompt formats: the `template` format's ids equal transformers' `apply_chat_template` for the template families
//! of Qwen2/2.5-VL, Qwen3, Llama-3, Gemma-2/3, Mistral, Phi-3 and SmolLM2 (fixtures in
//! tests/fixtures/prompt_families, generator gen_prompt_families.py), with images, truncation, special-token strings
//! in data and templates without a system turn; the `qwen3-reranker` format; configurable judgement tokens.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use umrank::models::text::chat_template::ChatTemplates;
use umrank::models::text::prompt::{PromptBuilder, PromptError, RerankInput, Side};
use umrank::models::text::prompt_format::{
    AnswerTokens, PromptFormat, PromptSettings, PromptSettingsError,
};
use umrank::models::text::tokenizer::{Tokenizer, TokenizerError};

const FAMILIES: [&str; 8] = [
    "qwen2_vl", "qwen3", "llama3", "gemma2", "gemma3", "mistral", "phi3", "smollm2",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompt_families")
}

#[derive(Deserialize)]
struct References {
    judge_instruction: String,
    families: BTreeMap<String, Family>,
}

#[derive(Deserialize)]
struct Family {
    answer_ids: [u32; 2],
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    instruction: String,
    query: CaseSide,
    document: CaseSide,
    max_len: Option<usize>,
    folded: bool,
    ids: Vec<u32>,
    kept_document: Option<usize>,
}

#[derive(Deserialize)]
struct CaseSide {
    text: String,
    image_tokens: Option<usize>,
}

impl CaseSide {
    fn side(&self) -> Side<'_> {
        Side {
            text: &self.text,
            image_tokens: self.image_tokens,
        }
    }
}

impl Case {
    fn input(&self) -> RerankInput<'_> {
        RerankInput {
            instruction: &self.instruction,
            query: self.query.side(),
            document: self.document.side(),
        }
    }
}

fn references() -> References {
    serde_json::from_str(&fs::read_to_string(fixtures().join("references.json")).unwrap()).unwrap()
}

fn template_settings() -> PromptSettings {
    PromptSettings {
        format: PromptFormat::Template,
        answer_tokens: AnswerTokens::default(),
    }
}

#[test]
fn template_prompts_match_transformers_for_every_family() {
    let references = references();
    assert_eq!(
        references.families.keys().collect::<Vec<_>>(),
        {
            let mut names = FAMILIES.to_vec();
            names.sort();
            names
        }
        .iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(
        references.judge_instruction,
        PromptSettings::default().judge_instruction()
    );
    for (name, family) in &references.families {
        let dir = fixtures().join(name);
        let tokenizer = Tokenizer::from_dir(&dir).unwrap();
        let templates = ChatTemplates::from_dir(&dir).unwrap();
        let template = templates.select(None, false).unwrap();
        let builder = PromptBuilder::for_settings(&tokenizer, &template_settings(), Some(template))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let answers = tokenizer.answer_ids("yes", "no").unwrap();
        assert_eq!([answers.yes, answers.no], family.answer_ids, "{name}");
        let mut kinds = Vec::new();
        for case in &family.cases {
            let prompt = builder
                .build(&case.input(), case.max_len.unwrap_or(usize::MAX))
                .unwrap_or_else(|err| panic!("{name} {}: {err}", case.name));
            assert_eq!(prompt.ids, case.ids, "{name} {}", case.name);
            if let Some(kept) = case.kept_document {
                assert_eq!(prompt.kept.document, kept, "{name} {}", case.name);
                assert!(prompt.was_truncated(&case.input()));
            }
            kinds.push((case.name.as_str(), case.folded));
        }
        assert!(kinds.iter().any(|(kind, _)| *kind == "truncated"), "{name}");
        assert!(
            kinds
                .iter()
                .any(|(kind, _)| *kind == "special strings in data"),
            "{name}"
        );
    }
}

/// Gemma-2 raises on a system turn, Gemma-3 on a string one, and this Mistral template drops it: the instruction is
/// folded into the user turn for them, and nowhere else.
#[test]
fn templates_without_a_system_turn_get_the_instruction_in_the_user_turn() {
    let references = references();
    for (name, family) in &references.families {
        let folded = family.cases.iter().all(|case| case.folded);
        let expected = matches!(name.as_str(), "gemma2" | "gemma3" | "mistral");
        assert_eq!(folded, expected, "{name}");
        let dir = fixtures().join(name);
        let tokenizer = Tokenizer::from_dir(&dir).unwrap();
        let templates = ChatTemplates::from_dir(&dir).unwrap();
        let builder = PromptBuilder::for_settings(
            &tokenizer,
            &template_settings(),
            Some(templates.select(None, false).unwrap()),
        )
        .unwrap();
        let case = &family.cases[0];
        let text = builder
            .render_text(
                &case.input(),
                umrank::models::text::prompt::KeptText::whole(&case.input()),
            )
            .unwrap();
        assert!(text.contains(&references.judge_instruction), "{name}");
        assert_eq!(
            text.contains(&format!("{}\n\n<Instruct>", references.judge_instruction)),
            expected,
            "{name}: {text}"
        );
    }
}

/// Special-token strings in data stay text: none of the document's ids is a control token of the family.
#[test]
fn data_never_becomes_a_control_token() {
    let references = references();
    for (name, family) in &references.families {
        let tokenizer = Tokenizer::from_dir(&fixtures().join(name)).unwrap();
        let case = family
            .cases
            .iter()
            .find(|case| case.name == "special strings in data")
            .unwrap();
        let plain = family
            .cases
            .iter()
            .find(|case| case.name == "text")
            .unwrap();
        let specials: Vec<u32> = tokenizer
            .added_tokens()
            .into_iter()
            .filter(|token| token.special)
            .map(|token| token.id)
            .collect();
        let count = |ids: &[u32]| ids.iter().filter(|id| specials.contains(id)).count();
        assert_eq!(count(&case.ids), count(&plain.ids), "{name}");
    }
}

/// With the Qwen2-VL template, the `template` format is the `paper` format, images included.
#[test]
fn the_qwen2_vl_template_renders_the_paper_layout() {
    let dir = fixtures().join("qwen2_vl");
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let templates = ChatTemplates::from_dir(&dir).unwrap();
    let template = PromptBuilder::for_settings(
        &tokenizer,
        &template_settings(),
        Some(templates.select(None, false).unwrap()),
    )
    .unwrap();
    let paper = PromptBuilder::reranker(&tokenizer).unwrap();
    for case in &references().families["qwen2_vl"].cases {
        let max_len = case.max_len.unwrap_or(usize::MAX);
        let a = template.build(&case.input(), max_len).unwrap();
        let b = paper.build(&case.input(), max_len).unwrap();
        assert_eq!(a, b, "{}", case.name);
    }
}

/// Shared-prefix groups work for a template family: every prompt is the prefix plus its suffix, and equals the
/// prompt built alone.
#[test]
fn groups_share_a_prefix_with_a_llama3_template() {
    let dir = fixtures().join("llama3");
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let templates = ChatTemplates::from_dir(&dir).unwrap();
    let builder = PromptBuilder::for_settings(
        &tokenizer,
        &template_settings(),
        Some(templates.select(None, false).unwrap()),
    )
    .unwrap();
    let documents = [
        Side::text("Martian skies are butterscotch by day."),
        Side::text("Sunsets over Gale crater turn blue."),
        Side::text(""),
    ];
    let query = Side::text("What colour is the sky on Mars at noon?");
    let group = builder
        .build_group("Retrieve the passage.", query, &documents, usize::MAX)
        .unwrap();
    let header = tokenizer
        .encode("<|begin_of_text|><|start_header_id|>system", false)
        .unwrap();
    assert!(group.prefix_len > header.len());
    for (index, document) in documents.iter().enumerate() {
        let alone = builder
            .build(
                &RerankInput {
                    instruction: "Retrieve the passage.",
                    query,
                    document: *document,
                },
                usize::MAX,
            )
            .unwrap();
        let joined: Vec<u32> = group
            .prefix()
            .iter()
            .chain(group.suffix(index))
            .copied()
            .collect();
        assert_eq!(joined, alone.ids);
    }
}

/// Qwen3-Reranker's published prompt: its prefix, `<Instruct>: ..\n<Query>: ..\n<Document>: ..`, and its suffix
/// with the empty think block; ids equal encoding that text whole.
#[test]
fn qwen3_reranker_format_is_the_published_prompt() {
    let dir = fixtures().join("qwen3");
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let settings = PromptSettings {
        format: PromptFormat::Qwen3Reranker,
        answer_tokens: AnswerTokens::default(),
    };
    let builder = PromptBuilder::for_settings(&tokenizer, &settings, None).unwrap();
    let input = RerankInput {
        instruction: "Given a web search query, retrieve relevant passages that answer the query",
        query: Side::text("What is the capital of China?"),
        document: Side::text("The capital of China is Beijing."),
    };
    let kept = umrank::models::text::prompt::KeptText::whole(&input);
    let expected = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the \
         Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n\
         <Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: What is \
         the capital of China?\n<Document>: The capital of China is Beijing.<|im_end|>\n<|im_start|>assistant\n\
         <think>\n\n</think>\n\n";
    assert_eq!(builder.render_text(&input, kept).unwrap(), expected);
    let prompt = builder.build(&input, usize::MAX).unwrap();
    assert_eq!(prompt.ids, tokenizer.encode(expected, false).unwrap());
    let think = tokenizer.token_id("<think>").unwrap();
    assert!(prompt.ids.contains(&think));
}

#[test]
fn judgement_tokens_are_configurable_and_must_be_single_tokens() {
    let tokenizer = Tokenizer::from_dir(&fixtures().join("qwen3")).unwrap();
    let ids = tokenizer.answer_ids("no", "yes").unwrap();
    let default = tokenizer.yes_no_ids().unwrap();
    assert_eq!((ids.yes, ids.no), (default.no, default.yes));
    match tokenizer.answer_ids("butterscotch", "no").unwrap_err() {
        TokenizerError::AnswerNotSingleToken { word, tokens, .. } => {
            assert_eq!(word, "butterscotch");
            assert!(tokens.len() > 1);
        }
        other => panic!("expected AnswerNotSingleToken, got {other}"),
    }
    assert!(matches!(
        tokenizer.answer_ids("yes", "yes").unwrap_err(),
        TokenizerError::AnswerCollision { .. }
    ));
    let settings = PromptSettings {
        format: PromptFormat::Paper,
        answer_tokens: AnswerTokens {
            yes: "true".into(),
            no: "false".into(),
        },
    };
    assert!(settings
        .judge_instruction()
        .ends_with("\"true\" or \"false\"."));
}

#[test]
fn formats_that_cannot_apply_are_clear_errors() {
    let llama = Tokenizer::from_dir(&fixtures().join("llama3")).unwrap();
    let err = PromptBuilder::reranker(&llama).unwrap_err();
    assert!(err.to_string().contains("<|im_start|>"), "{err}");
    let err = PromptBuilder::for_settings(&llama, &template_settings(), None).unwrap_err();
    assert!(matches!(err, PromptError::NoTemplate));
    let dir = fixtures().join("llama3");
    let templates = ChatTemplates::from_dir(&dir).unwrap();
    let builder = PromptBuilder::for_settings(
        &llama,
        &template_settings(),
        Some(templates.select(None, false).unwrap()),
    )
    .unwrap();
    let with_image = RerankInput {
        instruction: "",
        query: Side::image(4, "q"),
        document: Side::text("d"),
    };
    assert!(matches!(
        builder.build(&with_image, usize::MAX).unwrap_err(),
        PromptError::NoVisionTokens { .. }
    ));
}

#[test]
fn settings_are_recorded_and_a_conflicting_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        PromptSettings::resolve(None, &[dir.path()]).unwrap(),
        PromptSettings::default()
    );
    let settings = template_settings();
    settings.record(dir.path()).unwrap();
    assert_eq!(
        PromptSettings::read_recorded(dir.path()).unwrap(),
        Some(settings.clone())
    );
    assert_eq!(
        PromptSettings::resolve(None, &[dir.path()]).unwrap(),
        settings
    );
    assert_eq!(
        PromptSettings::resolve(Some(&settings), &[dir.path()]).unwrap(),
        settings
    );
    let err = PromptSettings::resolve(Some(&PromptSettings::default()), &[dir.path()]).unwrap_err();
    assert!(matches!(err, PromptSettingsError::Conflict { .. }));
    assert!(err.to_string().contains("template (yes/no)"), "{err}");
    fs::write(
        dir.path().join("reranker_prompt.json"),
        "{\"format\": \"chatml\"}",
    )
    .unwrap();
    let err = PromptSettings::read_recorded(dir.path()).unwrap_err();
    assert!(err.to_string().contains("reranker_prompt.json"), "{err}");
}
