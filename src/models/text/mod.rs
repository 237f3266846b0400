//! Text in and out of a model: tokenizers, chat templates, the reranker's prompt, and the Python-flavoured JSON
//! that templates render.

pub mod chat_template;
pub mod gguf_tokenizer;
pub mod prompt;
pub mod prompt_format;
pub mod prompt_layout;
pub mod pyjson;
pub mod tokenizer;
