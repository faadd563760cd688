//! Hugging Face directories: write_dir then load_dir round-trips every architecture (f32 exactly, bf16 as
//! rounded), sharded checkpoints load, the tokenizer files' variants parse, and bad input is a clear error.
mod common;

use half::{bf16, f16};
use mappa::config::Arch;
use mappa::hf::{load_dir, write_dir};
use mappa::loader::LoadedModel;
use mappa::tensor::{DType, Tensor};
use mappa::tokenizer::{Tokenizer, TokenizerSpec};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use tempfile::TempDir;

const ARCHES: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

fn written(model: &LoadedModel, dtype: DType) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_dir(model, dir.path(), dtype).unwrap();
    dir
}

/// The error of loading `dir`, with its whole context chain.
fn load_error(dir: &Path) -> String {
    match load_dir(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_mentions(message: &str, words: &[&str]) {
    for w in words {
        assert!(message.contains(w), "error does not mention {w:?}: {message}");
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// Same names, shapes and values, after passing every original value through `round`.
fn assert_same_weights(original: &LoadedModel, loaded: &LoadedModel, dtype: DType, round: impl Fn(f32) -> f32) {
    let names = |m: &LoadedModel| m.weights.tensors.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(original), names(loaded));
    for (name, want) in &original.weights.tensors {
        let got = &loaded.weights.tensors[name];
        assert_eq!(got.shape, want.shape, "{name}");
        assert_eq!(got.dtype, dtype, "{name}");
        let rounded: Vec<f32> = want.to_f32().into_iter().map(&round).collect();
        assert_eq!(bits(&got.to_f32()), bits(&rounded), "{name}");
    }
}

fn assert_same_tokenizer(original: &LoadedModel, loaded: &LoadedModel) {
    let (a, b) = (&original.tokenizer, &loaded.tokenizer);
    assert_eq!(a.tokenizer_json, b.tokenizer_json);
    assert_eq!(a.chat_template, b.chat_template);
    assert_eq!(a.bos_token, b.bos_token);
    assert_eq!(a.eos_token, b.eos_token);
    assert_eq!(a.add_bos_token, b.add_bos_token);
}

#[test]
fn round_trip_f32_is_exact() {
    for arch in ARCHES {
        let model = common::tiny_model(arch, 7);
        let dir = written(&model, DType::F32);
        let loaded = load_dir(dir.path()).unwrap();
        assert_eq!(loaded.config, model.config, "{arch:?}");
        assert_same_weights(&model, &loaded, DType::F32, |x| x);
        assert_same_tokenizer(&model, &loaded);
        assert_eq!(loaded.path, dir.path());
    }
}

#[test]
fn round_trip_bf16_rounds_to_nearest_even() {
    for arch in ARCHES {
        let model = common::tiny_model(arch, 11);
        let dir = written(&model, DType::BF16);
        let loaded = load_dir(dir.path()).unwrap();
        assert_eq!(loaded.config, model.config, "{arch:?}");
        assert_same_weights(&model, &loaded, DType::BF16, |x| bf16::from_f32(x).to_f32());
        assert_same_tokenizer(&model, &loaded);
        let config: Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(config["torch_dtype"], "bfloat16");

        // Written again from the mapped bf16 tensors (no conversion), the bytes stay the same.
        let again = written(&loaded, DType::BF16);
        let read = |d: &TempDir| std::fs::read(d.path().join("model.safetensors")).unwrap();
        assert_eq!(read(&dir), read(&again), "{arch:?}");
    }
}

#[test]
fn tied_embeddings_drop_lm_head() {
    let mut model = common::tiny_model(Arch::Llama, 3);
    assert!(model.config.tie_word_embeddings);
    let embed = model.weights.tensors["model.embed_tokens.weight"].clone();
    model.weights.tensors.insert("lm_head.weight".into(), embed);
    let loaded = load_dir(written(&model, DType::F32).path()).unwrap();
    assert!(!loaded.weights.tensors.contains_key("lm_head.weight"));
    assert!(loaded.weights.tensors.contains_key("model.embed_tokens.weight"));
}

#[test]
fn written_files_are_complete() {
    let model = common::tiny_model(Arch::Qwen2, 5);
    let dir = written(&model, DType::F32);
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    // No temporary files left behind.
    assert_eq!(
        names,
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    );
    let read =
        |name: &str| -> Value { serde_json::from_slice(&std::fs::read(dir.path().join(name)).unwrap()).unwrap() };
    let tc = read("tokenizer_config.json");
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(tc["model_max_length"], 256);
    let gc = read("generation_config.json");
    assert_eq!(gc["bos_token_id"], 1);
    assert_eq!(gc["eos_token_id"], 2);
}

/// Writes `tensors` as a safetensors file, each converted to `dtype`.
fn write_safetensors(path: &Path, tensors: &[(&String, &Tensor)], dtype: Dtype) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| match dtype {
            Dtype::F32 => t.bytes().to_vec(),
            Dtype::F16 => t.to_f32().iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
            other => panic!("no test conversion to {other}"),
        })
        .collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| (name.as_str(), TensorView::new(dtype, t.shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn sharded_checkpoint_loads() {
    let model = common::tiny_model(Arch::Qwen3, 13);
    let dir = written(&model, DType::F32);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    // Alternate tensors between an f32 shard and an f16 shard.
    let all: Vec<(&String, &Tensor)> = model.weights.tensors.iter().collect();
    let (first, second): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let first: Vec<_> = first.into_iter().map(|(_, t)| *t).collect();
    let second: Vec<_> = second.into_iter().map(|(_, t)| *t).collect();
    write_safetensors(&dir.path().join("model-00001-of-00002.safetensors"), &first, Dtype::F32);
    write_safetensors(&dir.path().join("model-00002-of-00002.safetensors"), &second, Dtype::F16);
    let weight_map: BTreeMap<&str, &str> = first
        .iter()
        .map(|(n, _)| (n.as_str(), "model-00001-of-00002.safetensors"))
        .chain(second.iter().map(|(n, _)| (n.as_str(), "model-00002-of-00002.safetensors")))
        .collect();
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(loaded.weights.tensors.len(), model.weights.tensors.len());
    let in_f16: Vec<&String> = second.iter().map(|(n, _)| *n).collect();
    for (name, want) in &model.weights.tensors {
        let got = &loaded.weights.tensors[name];
        assert_eq!(got.shape, want.shape, "{name}");
        let round = |x: f32| {
            if in_f16.contains(&name) {
                f16::from_f32(x).to_f32()
            } else {
                x
            }
        };
        let rounded: Vec<f32> = want.to_f32().into_iter().map(round).collect();
        assert_eq!(bits(&got.to_f32()), bits(&rounded), "{name}");
    }
}

#[test]
fn tokenizer_config_variants() {
    let model = common::tiny_model(Arch::Llama, 17);
    let dir = written(&model, DType::F32);
    let config = json!({
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "plain"},
        ],
        "bos_token": {"content": "t1", "lstrip": false},
        "eos_token": {"__type": "AddedToken", "content": "t2"},
        "add_bos_token": true,
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(dir.path().join("generation_config.json"), json!({"eos_token_id": [5, 2, 9]}).to_string()).unwrap();
    let loaded = load_dir(dir.path()).unwrap();
    let t = &loaded.tokenizer;
    assert_eq!(t.chat_template.as_deref(), Some("plain"));
    assert_eq!(t.bos_token.as_deref(), Some("t1"));
    assert_eq!(t.eos_token.as_deref(), Some("t2"));
    assert!(t.add_bos_token);
    assert_eq!(loaded.config.eos_token_ids, [2, 5, 9]);

    // A chat_template.jinja file wins over tokenizer_config.json's template.
    std::fs::write(dir.path().join("chat_template.jinja"), "from the file").unwrap();
    assert_eq!(load_dir(dir.path()).unwrap().tokenizer.chat_template.as_deref(), Some("from the file"));

    // Without tokenizer_config.json: no template, no special tokens, no BOS.
    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    let t = load_dir(dir.path()).unwrap().tokenizer;
    assert_eq!((t.chat_template, t.bos_token, t.eos_token, t.add_bos_token), (None, None, None, false));
}

#[test]
fn truncated_safetensors_is_an_error() {
    let dir = written(&common::tiny_model(Arch::Llama, 1), DType::F32);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(&load_error(dir.path()), &["model.safetensors", "not a valid safetensors file"]);
    std::fs::write(&path, b"").unwrap();
    assert_mentions(&load_error(dir.path()), &["model.safetensors"]);
}

#[test]
fn garbage_safetensors_header_is_an_error() {
    let dir = written(&common::tiny_model(Arch::Llama, 1), DType::F32);
    let garbage = b"{\"model.norm.weight\": garbage!!";
    let mut bytes = (garbage.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(garbage);
    bytes.extend_from_slice(&[0; 64]);
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    assert_mentions(&load_error(dir.path()), &["model.safetensors", "invalid JSON in header"]);
}

/// Rewrites `config.json` in `dir` through `edit`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn config_missing_hidden_size_is_an_error() {
    let dir = written(&common::tiny_model(Arch::Qwen2, 1), DType::F32);
    edit_config(dir.path(), |c| {
        c.remove("hidden_size");
    });
    assert_mentions(&load_error(dir.path()), &["config.json", "hidden_size"]);
}

#[test]
fn unsupported_model_type_is_an_error() {
    let dir = written(&common::tiny_model(Arch::Qwen2, 1), DType::F32);
    edit_config(dir.path(), |c| {
        c.insert("model_type".into(), json!("gpt2"));
    });
    assert_mentions(&load_error(dir.path()), &["config.json", "gpt2"]);
}

#[test]
fn integer_tensor_is_an_error() {
    let dir = written(&common::tiny_model(Arch::Llama, 1), DType::F32);
    let data = [0u8; 16];
    let view = TensorView::new(Dtype::I64, vec![2], &data).unwrap();
    safetensors::serialize_to_file([("model.norm.weight", view)], None, &dir.path().join("model.safetensors")).unwrap();
    assert_mentions(&load_error(dir.path()), &["model.safetensors", "model.norm.weight", "I64"]);
}

#[test]
fn missing_tokenizer_json_is_an_error() {
    let dir = written(&common::tiny_model(Arch::Llama, 1), DType::F32);
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_mentions(&load_error(dir.path()), &["tokenizer.json", "missing"]);
}

/// Found by fuzzing (fuzz/corpus/tokenizer_json/crash-*): tokenizer.json files the `tokenizers` crate panics on,
/// while reading (a syntax error reached inside "decoder") or at the first encode (a template naming an undefined
/// special token, or `$B` in the single-sequence template). Each must be an error when the tokenizer is built.
#[test]
fn malformed_tokenizer_json_is_an_error_not_a_panic() {
    let config = common::tiny_config(Arch::Llama);
    let good: Value = serde_json::from_str(&common::tiny_tokenizer(config.vocab_size).tokenizer_json).unwrap();
    let build = |json: &str| {
        let spec = TokenizerSpec { tokenizer_json: json.to_owned(), ..TokenizerSpec::default() };
        Tokenizer::new(&spec, &config).map(|tok| tok.encode("t3 t4", true))
    };
    assert!(build(&good.to_string()).unwrap().is_ok());
    let err = |json: &str| format!("{:#}", build(json).err().unwrap_or_else(|| panic!("accepted: {json}")));

    let text = good.to_string().replace("\"decoder\":null", "\"decoder\":{\"type\":\"Fuse\"\u{1}}");
    assert_mentions(&err(&text), &["invalid tokenizer.json", "not valid JSON"]);

    let with_template = |single: Value| {
        let mut json = good.clone();
        json["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": single,
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"t1": {"id": "t1", "ids": [1], "tokens": ["t1"]}},
        });
        json.to_string()
    };
    let (a, b) = (json!({"Sequence": {"id": "A", "type_id": 0}}), json!({"Sequence": {"id": "B", "type_id": 0}}));
    let special = |id: &str| json!({"SpecialToken": {"id": id, "type_id": 0}});
    assert!(build(&with_template(json!([special("t1"), a]))).unwrap().is_ok());
    assert_mentions(&err(&with_template(json!([special("t9"), a]))), &["post_processor", "\"t9\"", "special_tokens"]);
    assert_mentions(&err(&with_template(json!([a, b]))), &["post_processor", "$B"]);

    // BPE merges the crate joins without checking (2026-12-04, fuzz/corpus/tokenizer_json/crash-bpe-prefix):
    // a second token shorter than `continuing_subword_prefix`, and a join longer than every token.
    let bpe = |prefix: Value, vocab: Value, merges: Value| {
        let mut json = good.clone();
        json["model"] = json!({"type": "BPE", "continuing_subword_prefix": prefix, "vocab": vocab, "merges": merges});
        json.to_string()
    };
    let vocab = json!({"a": 0, "b": 1, "ab": 2, "t3": 3, "t4": 4});
    assert!(build(&bpe(Value::Null, vocab.clone(), json!([["a", "b"]]))).is_ok(), "a well-formed BPE model loads");
    assert!(build(&bpe(Value::Null, vocab.clone(), json!(["a b"]))).is_ok(), "merges as strings too");
    let long_prefix = bpe(json!("<|im_end|>"), vocab, json!([["a", "b"]]));
    assert_mentions(&err(&long_prefix), &["model.merges", "merge 0", "prefix"]);
    let too_long = bpe(Value::Null, json!({"a": 0, "b": 1}), json!([["a", "b"]]));
    assert_mentions(&err(&too_long), &["model.merges", "longer than any"]);
}

#[test]
fn missing_weights_are_an_error() {
    let dir = written(&common::tiny_model(Arch::Llama, 1), DType::F32);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_mentions(&load_error(dir.path()), &["model.safetensors.index.json"]);
}

/// A written model whose weights file is renamed to `shard-1.safetensors`, with an index mapping tensor -> shard.
fn index_dir(tensors: &[(&str, &str)]) -> TempDir {
    let dir = written(&common::tiny_model(Arch::Llama, 1), DType::F32);
    std::fs::rename(dir.path().join("model.safetensors"), dir.path().join("shard-1.safetensors")).unwrap();
    let weight_map: BTreeMap<&str, &str> = tensors.iter().copied().collect();
    std::fs::write(dir.path().join("model.safetensors.index.json"), json!({"weight_map": weight_map}).to_string())
        .unwrap();
    dir
}

#[test]
fn index_naming_a_missing_shard_is_an_error() {
    let dir = index_dir(&[("model.norm.weight", "shard-1.safetensors"), ("lm_head.weight", "shard-2.safetensors")]);
    assert_mentions(&load_error(dir.path()), &["shard-2.safetensors", "model.safetensors.index.json"]);
}

#[test]
fn index_naming_a_tensor_the_shard_lacks_is_an_error() {
    let dir = index_dir(&[("model.norm.weight", "shard-1.safetensors"), ("lm_head.weight", "shard-1.safetensors")]);
    assert_mentions(&load_error(dir.path()), &["shard-1.safetensors", "lm_head.weight"]);
}

#[test]
fn index_naming_a_path_outside_the_directory_is_an_error() {
    let dir = index_dir(&[("model.norm.weight", "../shard-1.safetensors")]);
    assert_mentions(&load_error(dir.path()), &["../shard-1.safetensors", "not a plain file name"]);
}
