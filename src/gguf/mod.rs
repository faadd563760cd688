//! GGUF (llama.cpp's format), version 3: reader, dequantisation and conversion to our HF-named tensors.
mod load;
pub mod quant;
pub mod reader;
pub mod tokenizer;
pub mod value;

pub use load::{load, load_weights};
pub use reader::{GgufFile, TensorInfo};
