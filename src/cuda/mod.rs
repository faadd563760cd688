//! The bf16 CUDA backend: the same `Model` interface as `cpu`, with bf16 storage, fp32 accumulation, fp32
//! logits and log-probs, cuBLASLt for the matrix products and our kernels (`kernels/*.cu`) for the rest.
//!
//! Files, bottom up: `device` (context, stream, every kernel loaded once, the probe), `gemm` (cuBLASLt),
//! one launcher file per kernel family (`norm`, `qkv`, `swiglu`, `attention`, `sample`; for training
//! `attention_backward`, `colsum`, `lm_head` and `optim`), each naming its CPU twin, and `model` (weights
//! in one device allocation, the paged KV pool, the batched step) with `graphs` (decode steps as CUDA
//! graphs) and `train` (scoring, backward, optimizer).
//! Every kernel is tested against its CPU twin in `tests/cuda_*.rs`; those tests skip, saying so, where
//! there is no device.
pub mod attention;
pub mod attention_backward;
pub mod colsum;
pub mod device;
pub mod gemm;
pub mod graphs;
pub mod lm_head;
pub mod model;
pub mod norm;
pub mod optim;
pub mod qkv;
pub mod sample;
pub mod swiglu;
pub mod train;

pub use device::{device, Gpu};
