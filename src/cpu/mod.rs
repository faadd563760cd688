//! The CPU reference backend: f32, multithreaded (rayon), the oracle every CUDA kernel is tested against.
