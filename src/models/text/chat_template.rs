//! Hugging Face chat templates, loaded from a model directory and rendered with minijinja the way transformers'
//! `apply_chat_template(..., tokenize=False)` renders them with Jinja2.
//!
//! Where a template lives: `chat_template.jinja` (transformers 4.50+), else `chat_template.json` (the processor
//! file of Qwen2-VL-style checkpoints), else the `chat_template` field of `tokenizer_config.json`, which is a
//! string or a list of `{name, template}` objects. The first source found is the whole answer, as in
//! transformers.
//!
//! What makes the rendering match Jinja2's: transformers' environment settings (`trim_blocks`, `lstrip_blocks`,
//! loop controls, no auto-escaping), its globals (`raise_exception`, `namespace`, `dict`), its `tojson` (Python's
//! `json.dumps`, see [`crate::models::text::pyjson`]), Python's `str`/`dict` methods through minijinja-contrib's pycompat, Python's
//! spelling of `True`, `False`, `None` and floats when a value is printed, and the same context variables
//! (`messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special tokens, extra keyword
//! arguments). Not provided: `strftime_now` (a rendering that depends on the clock has no place in a
//! reproducible corpus) and `{% generation %}` blocks.

use std::fs;
use std::path::{Path, PathBuf};

use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, Value};
use serde::Deserialize;

use crate::models::text::pyjson;

pub const TEMPLATE_JINJA_FILE: &str = "chat_template.jinja";
pub const PROCESSOR_TEMPLATE_FILE: &str = "chat_template.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The name transformers gives a template that is not one of several named ones.
pub const DEFAULT_TEMPLATE: &str = "default";
/// The named template transformers picks when tools are passed.
pub const TOOL_USE_TEMPLATE: &str = "tool_use";

/// The special-token fields of tokenizer_config.json that transformers passes to every template.
const SPECIAL_TOKEN_FIELDS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// The name the template is registered under inside its environment; no extension, so nothing is auto-escaped.
const ENGINE_NAME: &str = "chat_template";

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("could not read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: field `{field}` {expected}", path.display())]
    Field {
        path: PathBuf,
        field: &'static str,
        expected: &'static str,
    },
    #[error(
        "{}: no chat template (looked for {TEMPLATE_JINJA_FILE}, {PROCESSOR_TEMPLATE_FILE} and the chat_template field of {TOKENIZER_CONFIG_FILE})",
        dir.display()
    )]
    Missing { dir: PathBuf },
    #[error("{}: no chat template named {name:?} (it has {available:?})", path.display())]
    UnknownName {
        path: PathBuf,
        name: String,
        available: Vec<String>,
    },
    #[error("chat template {name:?} of {}: {source}", path.display())]
    Syntax {
        path: PathBuf,
        name: String,
        #[source]
        source: Error,
    },
    #[error("chat template {name:?} of {}: rendering failed: {source}", path.display())]
    Render {
        path: PathBuf,
        name: String,
        #[source]
        source: Error,
    },
    #[error("chat {what} are not valid JSON: {source}")]
    InputJson {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("chat messages must be a list of objects; {what}")]
    MessageShape { what: String },
    #[error("a chat needs at least one message")]
    EmptyChat,
}

/// One part of a multimodal message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentPart {
    Text(String),
    Image,
    Video,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: MessageContent,
}

impl ChatMessage {
    pub fn text(role: &str, text: &str) -> Self {
        Self {
            role: role.to_string(),
            content: MessageContent::Text(text.to_string()),
        }
    }

    pub fn parts(role: &str, parts: Vec<ContentPart>) -> Self {
        Self {
            role: role.to_string(),
            content: MessageContent::Parts(parts),
        }
    }

    /// The message as transformers hands it to a template: `{role, content}`, parts as `{type, text}` or
    /// `{type: image}`.
    fn to_value(&self) -> Value {
        let content = match &self.content {
            MessageContent::Text(text) => Value::from(text.as_str()),
            MessageContent::Parts(parts) => parts.iter().map(part_value).collect(),
        };
        [
            ("role", Value::from(self.role.as_str())),
            ("content", content),
        ]
        .into_iter()
        .collect()
    }
}

fn part_value(part: &ContentPart) -> Value {
    let entries: Vec<(&str, Value)> = match part {
        ContentPart::Text(text) => vec![("type", "text".into()), ("text", text.as_str().into())],
        ContentPart::Image => vec![("type", "image".into())],
        ContentPart::Video => vec![("type", "video".into())],
    };
    entries.into_iter().collect()
}

/// What a template renders: the conversation and the switches transformers passes alongside it.
#[derive(Debug, Clone)]
pub struct Chat {
    messages: Vec<Value>,
    tools: Option<Value>,
    add_generation_prompt: bool,
    kwargs: Vec<(String, Value)>,
}

impl Chat {
    pub fn new(messages: &[ChatMessage]) -> Self {
        Self::from_values(messages.iter().map(ChatMessage::to_value).collect())
    }

    /// Messages as OpenAI-style JSON (any fields: `tool_calls`, `reasoning_content`, ...). Key order is kept, as
    /// Python keeps it, because `tojson` writes keys in that order; keys whose value is null are dropped, as
    /// transformers drops them.
    pub fn from_json(messages: &str) -> Result<Self, ChatTemplateError> {
        let value: Value =
            serde_json::from_str(messages).map_err(|source| ChatTemplateError::InputJson {
                what: "messages",
                source,
            })?;
        if value.kind() != ValueKind::Seq {
            return Err(ChatTemplateError::MessageShape {
                what: format!("got a {}", value.kind()),
            });
        }
        let mut list = Vec::new();
        for (index, message) in value.try_iter().into_iter().flatten().enumerate() {
            list.push(without_null_fields(&message).ok_or_else(|| {
                ChatTemplateError::MessageShape {
                    what: format!("message {index} is a {}", message.kind()),
                }
            })?);
        }
        Ok(Self::from_values(list))
    }

    fn from_values(messages: Vec<Value>) -> Self {
        Self {
            messages,
            tools: None,
            add_generation_prompt: false,
            kwargs: Vec::new(),
        }
    }

    /// Ends the rendering with the header of an assistant turn, for a model to answer.
    pub fn with_generation_prompt(mut self, add: bool) -> Self {
        self.add_generation_prompt = add;
        self
    }

    /// Tool schemas as a JSON list, key order kept.
    pub fn with_tools_json(mut self, tools: &str) -> Result<Self, ChatTemplateError> {
        let value: Value =
            serde_json::from_str(tools).map_err(|source| ChatTemplateError::InputJson {
                what: "tools",
                source,
            })?;
        self.tools = Some(value);
        Ok(self)
    }

    /// An extra template variable, like transformers' `**kwargs` (`enable_thinking`, `add_vision_id`).
    pub fn with_kwarg(mut self, name: &str, value: Value) -> Self {
        self.kwargs.push((name.to_string(), value));
        self
    }

    pub fn has_tools(&self) -> bool {
        self.tools.is_some()
    }
}

/// A message object without its null-valued fields; `None` when the value is not an object.
fn without_null_fields(message: &Value) -> Option<Value> {
    if message.kind() != ValueKind::Map {
        return None;
    }
    let keys = message.try_iter().ok()?;
    Some(
        keys.filter_map(|key| {
            let item = message.get_item(&key).ok()?;
            (!item.is_none()).then_some((key, item))
        })
        .collect(),
    )
}

/// One compiled template.
#[derive(Debug)]
pub struct ChatTemplate {
    name: String,
    path: PathBuf,
    source: String,
    env: Environment<'static>,
    special_tokens: Vec<(&'static str, String)>,
}

impl ChatTemplate {
    /// Compiles `source` as transformers would. `path` and `name` only label errors.
    fn compile(
        name: &str,
        path: &Path,
        source: &str,
        special_tokens: Vec<(&'static str, String)>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = python_environment();
        env.add_template_owned(ENGINE_NAME, source.to_string())
            .map_err(|source| ChatTemplateError::Syntax {
                path: path.to_path_buf(),
                name: name.to_string(),
                source,
            })?;
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            source: source.to_string(),
            env,
            special_tokens,
        })
    }

    /// A template carried outside a model directory, as a GGUF file's `tokenizer.chat_template` is: `path` labels
    /// errors, `special_tokens` are the `bos_token` / `eos_token` strings the template may print.
    pub fn embedded(
        path: &Path,
        source: &str,
        special_tokens: Vec<(&'static str, String)>,
    ) -> Result<Self, ChatTemplateError> {
        Self::compile(DEFAULT_TEMPLATE, path, source, special_tokens)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The template text as it was loaded.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `chat` to the prompt text.
    pub fn render(&self, chat: &Chat) -> Result<String, ChatTemplateError> {
        if chat.messages.is_empty() {
            return Err(ChatTemplateError::EmptyChat);
        }
        let render_error = |source| ChatTemplateError::Render {
            path: self.path.clone(),
            name: self.name.clone(),
            source,
        };
        let template = self.env.get_template(ENGINE_NAME).map_err(render_error)?;
        template.render(self.context(chat)).map_err(render_error)
    }

    /// The variables transformers passes: special tokens, then keyword arguments (which override them), then
    /// the conversation.
    fn context(&self, chat: &Chat) -> Value {
        let mut entries: Vec<(String, Value)> = self
            .special_tokens
            .iter()
            .map(|(field, token)| (field.to_string(), Value::from(token.as_str())))
            .collect();
        entries.extend(chat.kwargs.iter().cloned());
        entries.push(("messages".into(), Value::from(chat.messages.clone())));
        entries.push((
            "tools".into(),
            chat.tools.clone().unwrap_or(Value::from(())),
        ));
        entries.push(("documents".into(), Value::from(())));
        entries.push((
            "add_generation_prompt".into(),
            Value::from(chat.add_generation_prompt),
        ));
        entries.into_iter().collect()
    }
}

/// The templates of one model directory.
#[derive(Debug)]
pub struct ChatTemplates {
    path: PathBuf,
    templates: Vec<ChatTemplate>,
}

impl ChatTemplates {
    /// Loads and compiles the chat template(s) of a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self, ChatTemplateError> {
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = read_json_if_exists(&config_path)?;
        let special_tokens = config
            .as_ref()
            .map(|config| special_tokens(&config_path, config))
            .transpose()?
            .unwrap_or_default();
        let (path, sources) = find_sources(dir, &config_path, config.as_ref())?;
        let templates = sources
            .into_iter()
            .map(|(name, source)| {
                ChatTemplate::compile(&name, &path, &source, special_tokens.clone())
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { path, templates })
    }

    /// The file the templates came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.iter().map(ChatTemplate::name)
    }

    /// The template transformers would use: the one named `name` if given, else `tool_use` when the chat has
    /// tools and the directory has that template, else `default`. A directory with a single template always
    /// answers with it unless another name is asked for.
    pub fn select(
        &self,
        name: Option<&str>,
        with_tools: bool,
    ) -> Result<&ChatTemplate, ChatTemplateError> {
        let wanted = match name {
            Some(name) => name,
            None if with_tools && self.find(TOOL_USE_TEMPLATE).is_some() => TOOL_USE_TEMPLATE,
            None => DEFAULT_TEMPLATE,
        };
        self.find(wanted)
            .ok_or_else(|| ChatTemplateError::UnknownName {
                path: self.path.clone(),
                name: wanted.to_string(),
                available: self.names().map(str::to_string).collect(),
            })
    }

    /// The template [`ChatTemplates::select`] picks, taken out of the set.
    pub fn into_selected(
        mut self,
        name: Option<&str>,
        with_tools: bool,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let wanted = self.select(name, with_tools)?.name.clone();
        let index = self
            .templates
            .iter()
            .position(|template| template.name == wanted)
            .expect("select found it");
        Ok(self.templates.swap_remove(index))
    }

    /// Renders `chat` with the template [`ChatTemplates::select`] picks for it.
    pub fn render(&self, chat: &Chat) -> Result<String, ChatTemplateError> {
        self.select(None, chat.has_tools())?.render(chat)
    }

    fn find(&self, name: &str) -> Option<&ChatTemplate> {
        self.templates.iter().find(|template| template.name == name)
    }
}

/// `(file, [(name, template)])` from the first place that has a template.
fn find_sources(
    dir: &Path,
    config_path: &Path,
    config: Option<&serde_json::Value>,
) -> Result<(PathBuf, Vec<(String, String)>), ChatTemplateError> {
    let jinja_path = dir.join(TEMPLATE_JINJA_FILE);
    if jinja_path.is_file() {
        let source = fs::read_to_string(&jinja_path).map_err(|source| ChatTemplateError::Read {
            path: jinja_path.clone(),
            source,
        })?;
        return Ok((jinja_path, vec![(DEFAULT_TEMPLATE.to_string(), source)]));
    }
    let processor_path = dir.join(PROCESSOR_TEMPLATE_FILE);
    if let Some(processor) = read_json_if_exists(&processor_path)? {
        let sources = template_field(&processor_path, &processor)?
            .ok_or_else(|| missing_field(&processor_path))?;
        return Ok((processor_path, sources));
    }
    if let Some(sources) = config
        .map(|config| template_field(config_path, config))
        .transpose()?
        .flatten()
    {
        return Ok((config_path.to_path_buf(), sources));
    }
    Err(ChatTemplateError::Missing {
        dir: dir.to_path_buf(),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateField {
    Single(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// The `chat_template` field of a JSON file, `None` when absent or null.
fn template_field(
    path: &Path,
    json: &serde_json::Value,
) -> Result<Option<Vec<(String, String)>>, ChatTemplateError> {
    let field = match json.get("chat_template") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(field) => field,
    };
    let parsed = TemplateField::deserialize(field).map_err(|_| ChatTemplateError::Field {
        path: path.to_path_buf(),
        field: "chat_template",
        expected: "must be a string or a list of {name, template} objects",
    })?;
    Ok(Some(match parsed {
        TemplateField::Single(source) => vec![(DEFAULT_TEMPLATE.to_string(), source)],
        TemplateField::Named(named) => named
            .into_iter()
            .map(|named| (named.name, named.template))
            .collect(),
    }))
}

fn missing_field(path: &Path) -> ChatTemplateError {
    ChatTemplateError::Field {
        path: path.to_path_buf(),
        field: "chat_template",
        expected: "is missing",
    }
}

/// The special tokens a template can refer to: strings, or AddedToken objects with a `content` field.
fn special_tokens(
    path: &Path,
    config: &serde_json::Value,
) -> Result<Vec<(&'static str, String)>, ChatTemplateError> {
    let mut tokens = Vec::new();
    for field in SPECIAL_TOKEN_FIELDS {
        let token = match config.get(field) {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(token)) => token.clone(),
            Some(object) => match object.get("content").and_then(|content| content.as_str()) {
                Some(token) => token.to_string(),
                None => {
                    return Err(ChatTemplateError::Field {
                        path: path.to_path_buf(),
                        field,
                        expected: "must be a string or an object with a string `content`",
                    })
                }
            },
        };
        tokens.push((field, token));
    }
    Ok(tokens)
}

fn read_json_if_exists(path: &Path) -> Result<Option<serde_json::Value>, ChatTemplateError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).map_err(|source| ChatTemplateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ChatTemplateError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// An environment configured like transformers' Jinja2 sandbox.
fn python_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", pyjson::tojson_filter);
    env.add_function("raise_exception", raise_exception);
    env
}

/// `raise_exception(message)`: the template rejects its input with its own message.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Prints `True`, `False`, `None` and floats as Python's `str` does; everything else as minijinja does.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    let python = match value.kind() {
        ValueKind::None => Some("None".to_string()),
        ValueKind::Bool => Some(if value.is_true() { "True" } else { "False" }.to_string()),
        ValueKind::Number if !value.is_integer() => {
            f64::try_from(value.clone()).ok().map(pyjson::float_repr)
        }
        _ => None,
    };
    match python {
        Some(text) => out
            .write_str(&text)
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "could not write template output")),
        None => minijinja::escape_formatter(out, state, value),
    }
}
