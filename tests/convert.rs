//! `mappa convert` and `mappa generate --prompts` through the real binary: GGUF -> Hugging Face directory
//! -> load gives identical f32 logits, and the batch mode writes ids and log-probs per prompt.
mod common;
use mappa::cpu::{CpuModel, Logits};
use std::path::Path;
use std::process::Command;

fn mappa(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mappa")).args(args).output().expect("run mappa");
    assert!(out.status.success(), "mappa {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn logits(model_path: &Path, ids: &[u32]) -> Vec<f32> {
    let m = CpuModel::new(&mappa::loader::load(model_path).unwrap()).unwrap();
    m.forward(ids, &mut m.new_cache(), Logits::All).unwrap()
}

#[test]
fn gguf_to_hf_round_trip_gives_identical_logits() {
    let gguf = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-f32");
    mappa(&["convert", gguf.to_str().unwrap(), out.to_str().unwrap(), "--dtype", "f32"]);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out.join(f).is_file(), "{f} not written");
    }
    let ids: Vec<u32> = vec![1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198];
    assert_eq!(logits(&gguf, &ids), logits(&out, &ids), "f32 conversion must not change a single logit");

    // The converted tokenizer and template behave as the GGUF's do.
    let (a, b) = (mappa::loader::load(&gguf).unwrap(), mappa::loader::load(&out).unwrap());
    let (ta, tb) = (
        mappa::tokenizer::Tokenizer::new(&a.tokenizer, &a.config).unwrap(),
        mappa::tokenizer::Tokenizer::new(&b.tokenizer, &b.config).unwrap(),
    );
    let msgs = [mappa::tokenizer::ChatMessage::new("user", "What is 7 times 8? Answer in $\\LaTeX$ 🙂")];
    assert_eq!(ta.encode_chat(&msgs).unwrap(), tb.encode_chat(&msgs).unwrap());
    assert_eq!(ta.stop_ids(), tb.stop_ids());
    assert_eq!(a.config, b.config);
}

#[test]
fn bf16_conversion_stays_close_and_batch_generation_reports_logprobs() {
    let gguf = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-bf16");
    mappa(&["convert", gguf.to_str().unwrap(), out.to_str().unwrap()]);
    let ids: Vec<u32> = vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];
    let (f, h) = (logits(&gguf, &ids), logits(&out, &ids));
    let worst = f.iter().zip(&h).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst > 0.0 && worst < 1.0, "bf16 weights should move logits a little, moved {worst}");

    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"id\": \"a\", \"prompt\": \"What is the capital of France?\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"Say hi.\"}]}\n").unwrap();
    let o = mappa(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "12",
    ]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "a");
    for l in &lines {
        let (toks, lps) = (l["token_ids"].as_array().unwrap(), l["logprobs"].as_array().unwrap());
        assert!(!toks.is_empty() && toks.len() <= 12);
        assert_eq!(toks.len(), lps.len());
        assert!(lps.iter().all(|x| x.as_f64().unwrap() <= 0.0));
        let finish = l["finish_reason"].as_str().unwrap();
        assert!(finish == "stop" || (finish == "length" && toks.len() == 12), "{l}");
    }
    assert!(lines[0]["completion"].as_str().unwrap().contains("Paris"), "{}", lines[0]);
}

#[test]
fn cli_errors_are_clear() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_mappa")).args(args).output().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").unwrap();
    let o = run(&["generate", "--model", junk.to_str().unwrap(), "--prompt", "hi"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().any(|l| l.starts_with("error:") && l.contains("junk.gguf")), "{err}");

    let gguf = common::smollm2_gguf();
    let o = run(&["generate", "--model", gguf.to_str().unwrap(), "--prompt", "hi", "--device", "cuda"]);
    if let Some(why) = mappa::model::cuda_unavailable() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("CUDA backend was asked for") && err.contains(&why), "{err}");
        assert!(o.stdout.is_empty(), "nothing generated");
    }
    let o = run(&["generate", "--model", gguf.to_str().unwrap(), "--prompt", "hi", "--max-new-tokens", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("mappa generate: backend "), "the chosen backend is said: {err}");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"ok\"}\n{\"promt\": \"typo\"}\n").unwrap();
    let o = run(&["generate", "--model", gguf.to_str().unwrap(), "--prompts", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 2"), "{}", String::from_utf8_lossy(&o.stderr));
}
