//! mappa: trains teams of LLM agents with per-action process rewards from an AI coach (MAPPA).
//!
//! Layers, bottom up: `tensor`/`config` (what a checkpoint holds), `gguf`/`hf` (file formats) and `loader`
//! (one entry point), `tokenizer` (encode, decode, chat template); below the seam, the backends: `cpu` (the
//! f32 reference) and `kernels`/`cuda` (the GPU side); `model`, the seam itself, the one interface through
//! which everything above reaches a model; above it, `sample` and `engine` (paged KV blocks, continuous
//! batching, constrained sequences, whose grammars `constrain` compiles), then rollouts, the trainer, the run
//! loop, serve and eval.
pub mod arith;
pub mod coach;
pub mod config;
pub mod constrain;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod dsbench;
pub mod engine;
pub mod eval;
pub mod gguf;
pub mod grade;
pub mod hf;
pub mod jsonl;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod optim;
pub mod report;
pub mod rl;
pub mod rollout;
pub mod run;
pub mod run_config;
pub mod sample;
pub mod sandbox;
pub mod serve;
pub mod template;
pub mod tensor;
pub mod tokenizer;
pub mod trainer;
