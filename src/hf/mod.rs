//! Hugging Face model directories: reading (`config.json`, safetensors weights, tokenizer files) into a
//! `LoadedModel`, and writing one back out in the same layout, for exports and training checkpoints.
//! The file names live here so the reader and the writer cannot drift apart.
mod read;
mod write;

pub use read::load_dir;
pub use write::write_dir;

const CONFIG: &str = "config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const CHAT_TEMPLATE: &str = "chat_template.jinja";
