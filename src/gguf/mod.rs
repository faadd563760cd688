//! GGUF (llama.cpp's format), version 3: reader, dequantisation and conversion to our HF-named tensors.
pub mod reader;
pub mod tokenizer;
pub mod value;

pub use reader::{GgufFile, TensorInfo};

use crate::loader::LoadedModel;
pub fn load(_path: &std::path::Path) -> anyhow::Result<LoadedModel> { anyhow::bail!("todo") }
