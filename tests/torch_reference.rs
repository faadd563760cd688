//! The CPU backend against transformers on tiny random llama (llama3 RoPE scaling, tied head), qwen2
//! (q/k/v biases) and qwen3 (q/k norm) models: tests/data/tiny-*/ from tools/make_tiny_fixtures.py.
//! Each model is loaded through the Hugging Face directory reader, so the loader is checked on real
//! transformers output too.
use mappa::cpu::{CpuModel, Logits};

fn check(name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let loaded = mappa::loader::load(&dir).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let tokens: Vec<u32> = serde_json::from_value(reference["tokens"].clone()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(reference["logits"].clone()).unwrap();
    let model = CpuModel::new(&loaded).unwrap();
    let got = model.forward(&tokens, &mut model.new_cache(), Logits::All).unwrap();
    let v = model.config.vocab_size;
    assert_eq!(got.len(), want.len() * v);
    let mut worst = 0f32;
    for (row, w) in got.chunks_exact(v).zip(&want) {
        for (a, b) in row.iter().zip(w) {
            worst = worst.max((a - b).abs());
        }
    }
    // f32 against f32; the fixture is rounded to 1e-6.
    assert!(worst < 1e-4, "{name}: logits differ from transformers by up to {worst}");
}

#[test]
fn tiny_llama_with_llama3_rope_scaling_matches_transformers() {
    check("tiny-llama");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check("tiny-qwen2");
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check("tiny-qwen3");
}
