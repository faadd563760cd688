//! A `model.safetensors` through `mappa::hf::load_dir`, beside the tiny llama fixture's config.json and
//! tokenizer.json: the header (JSON, offsets, dtypes, shapes) and a view of every tensor.
use std::path::Path;
use std::sync::OnceLock;

const CONFIG: &str = include_str!("../../../tests/data/tiny-llama/config.json");
const TOKENIZER: &str = include_str!("../../../tests/data/tiny-llama/tokenizer.json");

fn main() {
    static DIR: OnceLock<&Path> = OnceLock::new();
    afl::fuzz!(|data: &[u8]| {
        let dir = DIR.get_or_init(|| {
            mappa_fuzz::scratch_file("config.json", CONFIG.as_bytes());
            mappa_fuzz::scratch_file("tokenizer.json", TOKENIZER.as_bytes());
            mappa_fuzz::scratch_dir()
        });
        mappa_fuzz::scratch_file("model.safetensors", data);
        let Some(model) = mappa_fuzz::ok("load", mappa::hf::load_dir(dir)) else { return };
        for tensor in model.weights.tensors.values() {
            std::hint::black_box(tensor.to_f32());
        }
    });
}
