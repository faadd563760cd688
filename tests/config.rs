//! config.json parsing: both RoPE spellings (transformers >= 5 `rope_parameters`, older `rope_theta` +
//! `rope_scaling`), defaults, and settings the decoder does not implement, which must be refused.
use mappa::config::{Arch, ModelConfig};
use serde_json::{json, Value};

fn base() -> Value {
    json!({"model_type": "qwen2", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "eos_token_id": [5, 7]})
}

fn parse(v: &Value) -> anyhow::Result<ModelConfig> {
    ModelConfig::from_hf_json(&v.to_string())
}

#[test]
fn defaults_and_old_style_rope() {
    let mut v = base();
    v["rope_theta"] = json!(1e6);
    let c = parse(&v).unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
    assert_eq!(c.head_dim, 16);
    assert_eq!(c.rope_theta, 1e6);
    assert!(c.attention_bias, "qwen2 has q/k/v biases by default");
    assert_eq!(c.eos_token_ids, vec![5, 7]);
    assert_eq!(c.rope_scaling, None);
}

#[test]
fn transformers5_rope_parameters() {
    let mut v = base();
    v["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let c = parse(&v).unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.rope_scaling.unwrap().factor, 32.0);
    // Written back and read again: the same config.
    assert_eq!(parse(&c.to_hf_json("float32")).unwrap(), c);
}

#[test]
fn unsupported_settings_are_refused_by_name() {
    for (key, val, needle) in [
        ("hidden_act", json!("gelu"), "gelu"),
        ("mlp_bias", json!(true), "mlp_bias"),
        ("use_sliding_window", json!(true), "use_sliding_window"),
        ("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0}), "yarn"),
        ("num_key_value_heads", json!(3), "multiple"),
        ("hidden_size", json!("64"), "hidden_size"),
    ] {
        let mut v = base();
        v[key] = val;
        let err = format!("{:#}", parse(&v).unwrap_err());
        assert!(err.contains(needle), "{key}: {err}");
    }
    let mut v = base();
    v.as_object_mut().unwrap().remove("num_hidden_layers");
    assert!(parse(&v).unwrap_err().to_string().contains("num_hidden_layers"));
    assert!(format!("{:#}", parse(&json!({"model_type": "gpt2"})).unwrap_err()).contains("gpt2"));
    assert!(ModelConfig::from_hf_json("{not json").is_err());
}
