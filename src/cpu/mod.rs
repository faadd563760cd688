//! The CPU reference backend: f32, multithreaded (rayon; RAYON_NUM_THREADS sets the thread count), the oracle
//! every CUDA kernel is tested against. `ops` holds the elementwise and attention pieces; `rowwise` the
//! batch-invariant matrix product of inference, `linear` the `gemm` crate's products of training; `model` the
//! decoder that strings them together, `paged` its paged KV pool and batched step (the one inference path),
//! `train`, `grad` and `logprob` the training pass, `backend` all of it behind the model interface.
pub mod arena;
pub mod backend;
pub mod grad;
pub mod linear;
pub mod logprob;
pub mod model;
pub mod ops;
pub mod paged;
pub mod rowwise;
pub mod train;

pub use backend::CpuBackend;
pub use model::{split_params, CpuModel, KvCache, Logits, Param};
pub use train::{Scores, Tape};
