//! Tokenizer and chat template: encode/decode through the `tokenizers` crate, chat formatting through
//! minijinja running the model's own Jinja template (ChatML when the model has none), and the stop tokens.
use anyhow::{anyhow, Context, Result};

/// What a checkpoint says about its tokenizer, in the shape of Hugging Face's files: `tokenizer.json`
/// (verbatim) and the few fields of `tokenizer_config.json` we use. GGUF files are converted to this.
#[derive(Clone, Debug, Default)]
pub struct TokenizerSpec {
    /// The contents of a Hugging Face `tokenizer.json`.
    pub tokenizer_json: String,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Whether plain encoding starts with the BOS token.
    pub add_bos_token: bool,
}
