//! GGUF (llama.cpp's format), version 3: reader, dequantisation and conversion to our HF-named tensors.
pub mod reader;
pub mod tokenizer;
pub mod value;
pub mod quant;
mod load;

pub use load::{load, load_weights};
pub use reader::{GgufFile, TensorInfo};
