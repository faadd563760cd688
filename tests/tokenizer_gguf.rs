//! The tokenizer rebuilt from GGUF metadata: exact ids against transformers on the real SmolLM2 file, and
//! the pre-tokenizer families, special tokens and malformed metadata on small hand-made vocabularies.
mod common;

use mappa::gguf::tokenizer::from_metadata;
use mappa::gguf::value::{Metadata, Value};
use mappa::gguf::GgufFile;
use mappa::tokenizer::TokenizerSpec;
use std::str::FromStr;
use tokenizers::Tokenizer;

fn load(spec: &TokenizerSpec) -> Tokenizer {
    Tokenizer::from_str(&spec.tokenizer_json).expect("tokenizer.json loads")
}

fn encode(tok: &Tokenizer, text: &str, add_special_tokens: bool) -> Vec<u32> {
    tok.encode(text, add_special_tokens).expect("encode").get_ids().to_vec()
}

#[test]
fn smollm2_matches_transformers() {
    let gguf = GgufFile::open(&common::smollm2_gguf()).unwrap();
    let spec = from_metadata(&gguf.metadata).unwrap();
    let tok = load(&spec);
    let reference = common::reference();
    let cases = reference["tokenizer_cases"].as_array().expect("tokenizer_cases");
    assert!(cases.len() >= 7, "{} cases", cases.len());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ids = encode(&tok, text, false);
        assert_eq!(ids, want, "encoding {text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "decoding {text:?}");
    }
}

#[test]
fn smollm2_special_tokens_and_template() {
    let gguf = GgufFile::open(&common::smollm2_gguf()).unwrap();
    assert_eq!(gguf.metadata["tokenizer.ggml.bos_token_id"].as_u64(), Some(1));
    assert_eq!(gguf.metadata["tokenizer.ggml.eos_token_id"].as_u64(), Some(2));
    let spec = from_metadata(&gguf.metadata).unwrap();
    assert_eq!(spec.bos_token.as_deref(), Some("<|im_start|>"));
    assert_eq!(spec.eos_token.as_deref(), Some("<|im_end|>"));
    assert!(!spec.add_bos_token);
    let template = spec.chat_template.as_deref().expect("chat template");
    assert!(template.contains("<|im_start|>") && template.contains("messages"), "{template}");
    let tok = load(&spec);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    // No BOS is added when the metadata says so, even with special tokens on.
    assert_eq!(encode(&tok, "Hello world!", true), [19556, 905, 17]);
}

/// A byte-level vocabulary small enough to reason about: "hi hi", digits and two control tokens.
const TINY_TOKENS: [&str; 12] = ["<|bos|>", "h", "i", "Ġ", "hi", "Ġhi", "1", "2", "3", "12", "123", "<|im_start|>"];

fn tiny_meta(pre: &str) -> Metadata {
    let strings = |v: &[&str]| Value::Array(v.iter().map(|s| Value::Str(s.to_string())).collect());
    let types = TINY_TOKENS.iter().map(|t| Value::I32(if t.starts_with("<|") { 3 } else { 1 })).collect();
    Metadata::from([
        ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), strings(&TINY_TOKENS)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), strings(&["h i", "Ġ hi", "1 2", "12 3"])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
    ])
}

fn tiny_encode(pre: &str, text: &str) -> Vec<u32> {
    encode(&load(&from_metadata(&tiny_meta(pre)).unwrap()), text, false)
}

fn error(meta: &Metadata) -> String {
    format!("{:#}", from_metadata(meta).expect_err("should fail"))
}

#[test]
fn pre_tokenizer_families_split_digits_their_own_way() {
    for pre in ["gpt2", "gpt-2", "default", "llama-bpe", "llama3", "llama-v3"] {
        assert_eq!(tiny_encode(pre, "hi hi123"), [4, 5, 10], "{pre}");
    }
    for pre in ["smollm", "starcoder", "refact", "qwen2", "deepseek-r1-qwen"] {
        assert_eq!(tiny_encode(pre, "hi hi123"), [4, 5, 6, 7, 8], "{pre}");
    }
}

#[test]
fn control_tokens_encode_whole() {
    let spec = from_metadata(&tiny_meta("smollm")).unwrap();
    let tok = load(&spec);
    assert_eq!(encode(&tok, "<|im_start|>hi", false), [11, 4]);
    assert_eq!(tok.decode(&[11, 4], false).unwrap(), "<|im_start|>hi");
    assert_eq!(tok.decode(&[11, 4], true).unwrap(), "hi");
    assert_eq!((spec.bos_token.as_deref(), spec.chat_template), (Some("<|bos|>"), None));
    assert!(!spec.add_bos_token);
}

#[test]
fn add_bos_token_prepends_bos() {
    let mut meta = tiny_meta("gpt2");
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    let spec = from_metadata(&meta).unwrap();
    assert!(spec.add_bos_token);
    let tok = load(&spec);
    assert_eq!(encode(&tok, "hi hi", true), [0, 4, 5]);
    assert_eq!(encode(&tok, "hi hi", false), [4, 5]);
}

#[test]
fn unknown_pre_tokenizer_is_named() {
    let e = error(&tiny_meta("jais-9000"));
    assert!(e.contains("jais-9000") && e.contains("smollm"), "{e}");
}

#[test]
fn other_tokenizer_models_are_rejected() {
    for model in ["bert", "llama"] {
        let mut meta = tiny_meta("gpt2");
        meta.insert("tokenizer.ggml.model".into(), Value::Str(model.into()));
        let e = error(&meta);
        assert!(e.contains(model) && e.contains("gpt2"), "{e}");
    }
}

#[test]
fn missing_or_ill_typed_keys_are_named() {
    for key in ["tokenizer.ggml.merges", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.pre"] {
        let mut meta = tiny_meta("gpt2");
        meta.remove(key);
        let e = error(&meta);
        assert!(e.contains(key), "{e}");
        meta.insert(key.into(), Value::Bool(true));
        let e = error(&meta);
        assert!(e.contains(key), "{e}");
    }
}

#[test]
fn malformed_entries_are_errors_not_panics() {
    let mut meta = tiny_meta("gpt2");
    meta.insert("tokenizer.ggml.token_type".into(), Value::Array(vec![Value::I32(1); 3]));
    assert!(error(&meta).contains("token_type has 3 entries"), "{}", error(&meta));

    let mut meta = tiny_meta("gpt2");
    meta.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(12));
    assert!(error(&meta).contains("eos_token_id 12 is out of range"), "{}", error(&meta));

    let mut meta = tiny_meta("gpt2");
    meta.insert("tokenizer.ggml.merges".into(), Value::Array(vec![Value::Str("hi".into())]));
    assert!(error(&meta).contains("merges[0]"), "{}", error(&meta));

    // A merge of tokens that are not in the vocabulary: the tokenizers crate refuses the JSON.
    let mut meta = tiny_meta("gpt2");
    meta.insert("tokenizer.ggml.merges".into(), Value::Array(vec![Value::Str("x y".into())]));
    assert!(error(&meta).contains("does not load"), "{}", error(&meta));

    let mut meta = tiny_meta("gpt2");
    let mut tokens = TINY_TOKENS.map(|t| Value::Str(t.into())).to_vec();
    tokens[2] = Value::Str("h".into());
    meta.insert("tokenizer.ggml.tokens".into(), Value::Array(tokens));
    assert!(error(&meta).contains("twice"), "{}", error(&meta));

    let mut meta = tiny_meta("gpt2");
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    meta.remove("tokenizer.ggml.bos_token_id");
    assert!(error(&meta).contains("bos_token_id"), "{}", error(&meta));
}

/// Each token's bytes spell the text exactly, characters split over several tokens included (decoded alone,
/// such a token is only U+FFFD): what `logprobs[].bytes` of `mappa serve` relies on.
#[test]
fn smollm2_token_bytes_spell_the_text() {
    let loaded = mappa::loader::load(&common::smollm2_gguf()).unwrap();
    let tok = mappa::tokenizer::Tokenizer::new(&loaded.tokenizer, &loaded.config).unwrap();
    let text = "naïve café: 世界 🎉 — x²\n\tok";
    let ids = tok.encode(text, false).unwrap();
    let bytes: Vec<Vec<u8>> = ids.iter().map(|&id| tok.token_bytes(id).expect("an id of the vocabulary")).collect();
    assert_eq!(bytes.concat(), text.as_bytes());
    assert!(bytes.iter().any(|b| std::str::from_utf8(b).is_err()), "no token holds part of a character: {ids:?}");
    let im_end = tok.token_id("<|im_end|>").expect("<|im_end|>");
    assert_eq!(tok.token_bytes(im_end).unwrap(), b"<|im_end|>");
    assert_eq!(tok.token_bytes(u32::MAX), None);
}
