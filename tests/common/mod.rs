//! Fixtures shared by the integration tests: the SmolLM2 GGUF that tools/setup.sh installs, its reference
//! outputs (computed with transformers in f32), and tiny random models of each architecture.
#![allow(dead_code)] // each test binary uses its own subset
pub mod gpu;
pub mod scripted;
pub mod served;
use mappa::config::{Arch, ModelConfig};
use mappa::loader::LoadedModel;
use mappa::tensor::{Tensor, Weights};
use mappa::tokenizer::TokenizerSpec;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

/// The real model. Missing means setup did not run: that is a failure, never a skip.
pub fn smollm2_gguf() -> PathBuf {
    let p = mappa::loader::setup_home().expect("HOME or MAPPA_HOME must be set").join(mappa::loader::SMOLLM2_GGUF);
    assert!(p.is_file(), "{} is missing: run tools/setup.sh first", p.display());
    p
}

/// SmolLM2 on the CPU backend with its tokenizer, loaded once per test binary.
pub fn smollm2() -> &'static (mappa::cpu::CpuBackend, mappa::tokenizer::Tokenizer) {
    static M: std::sync::OnceLock<(mappa::cpu::CpuBackend, mappa::tokenizer::Tokenizer)> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let loaded = mappa::loader::load(&smollm2_gguf()).expect("load SmolLM2");
        let tok = mappa::tokenizer::Tokenizer::new(&loaded.tokenizer, &loaded.config).expect("tokenizer");
        (mappa::cpu::CpuBackend::new(&loaded).expect("CPU model"), tok)
    })
}

/// The committed fixtures, `tests/data/<name>`: beside the sources where the binary was built, else under
/// the working directory (the device machine runs the binaries from a copy of the tree elsewhere).
pub fn test_data(name: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    if built.is_dir() { built } else { PathBuf::from("tests/data") }.join(name)
}

pub fn reference() -> serde_json::Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/models/smollm2-135m-instruct-q4_1.reference.json");
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    serde_json::from_str(&text).expect("reference JSON")
}

pub fn tiny_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 67,
        hidden_size: 48,
        intermediate_size: 80,
        num_layers: 2,
        num_heads: 6,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: arch == Arch::Llama,
        attention_bias: arch == Arch::Qwen2,
        qk_norm: arch == Arch::Qwen3,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// HF-named tensors with the shapes `cfg` implies, filled with seeded random values.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> Weights {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut w = Weights::default();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let v = (0..n).map(|_| offset + scale * rng.random_range(-1.0f32..1.0)).collect();
        w.tensors.insert(name, Tensor::from_f32(shape, v));
    };
    let (d, f, q, kv, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    add("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d], 0.5, 0.0);
    add("model.norm.weight".into(), vec![d], 0.2, 1.0);
    if !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), vec![cfg.vocab_size, d], 0.3, 0.0);
    }
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![d], 0.2, 1.0);
        add(format!("{p}.post_attention_layernorm.weight"), vec![d], 0.2, 1.0);
        add(format!("{p}.self_attn.q_proj.weight"), vec![q, d], 0.3, 0.0);
        add(format!("{p}.self_attn.k_proj.weight"), vec![kv, d], 0.3, 0.0);
        add(format!("{p}.self_attn.v_proj.weight"), vec![kv, d], 0.3, 0.0);
        add(format!("{p}.self_attn.o_proj.weight"), vec![d, q], 0.3, 0.0);
        if cfg.attention_bias {
            add(format!("{p}.self_attn.q_proj.bias"), vec![q], 0.1, 0.0);
            add(format!("{p}.self_attn.k_proj.bias"), vec![kv], 0.1, 0.0);
            add(format!("{p}.self_attn.v_proj.bias"), vec![kv], 0.1, 0.0);
        }
        if cfg.qk_norm {
            add(format!("{p}.self_attn.q_norm.weight"), vec![hd], 0.2, 1.0);
            add(format!("{p}.self_attn.k_norm.weight"), vec![hd], 0.2, 1.0);
        }
        add(format!("{p}.mlp.gate_proj.weight"), vec![f, d], 0.3, 0.0);
        add(format!("{p}.mlp.up_proj.weight"), vec![f, d], 0.3, 0.0);
        add(format!("{p}.mlp.down_proj.weight"), vec![d, f], 0.3, 0.0);
    }
    w
}

/// A word-level tokenizer over the tiny vocabulary ("t0" .. "t66"), enough for formats and plumbing.
pub fn tiny_tokenizer(vocab: usize) -> TokenizerSpec {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..vocab).map(|i| (format!("t{i}"), i.into())).collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    TokenizerSpec {
        tokenizer_json: json.to_string(),
        chat_template: Some("{% for m in messages %}{{ m['content'] }} {% endfor %}".into()),
        bos_token: Some("t1".into()),
        eos_token: Some("t2".into()),
        add_bos_token: false,
    }
}

pub fn tiny_model(arch: Arch, seed: u64) -> LoadedModel {
    let config = tiny_config(arch);
    LoadedModel {
        weights: random_weights(&config, seed),
        tokenizer: tiny_tokenizer(config.vocab_size),
        path: PathBuf::from(format!("<tiny {arch:?}>")),
        config,
    }
}

/// SmolLM2's tokenizer and chat template, loaded once per test binary.
pub fn chat_tokenizer() -> &'static mappa::tokenizer::Tokenizer {
    static TOK: std::sync::OnceLock<mappa::tokenizer::Tokenizer> = std::sync::OnceLock::new();
    TOK.get_or_init(|| {
        let m = tiny_chat_model(0);
        mappa::tokenizer::Tokenizer::new(&m.tokenizer, &m.config).expect("SmolLM2 tokenizer")
    })
}

/// A tiny random llama (2 layers, hidden 32) with SmolLM2's real tokenizer and chat template (vocab 49152):
/// fast enough to train in a test, yet it speaks ChatML with real special tokens, so rollouts, contexts and
/// coach prompts go through the same code paths as with a real model.
pub fn tiny_chat_model(seed: u64) -> LoadedModel {
    let smol = mappa::loader::load(&smollm2_gguf()).expect("loading SmolLM2 for its tokenizer");
    let config = ModelConfig {
        vocab_size: smol.config.vocab_size,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        tie_word_embeddings: true,
        bos_token_id: smol.config.bos_token_id,
        eos_token_ids: smol.config.eos_token_ids.clone(),
        ..tiny_config(Arch::Llama)
    };
    LoadedModel {
        weights: random_weights(&config, seed),
        tokenizer: smol.tokenizer,
        path: PathBuf::from(format!("<tiny chat model, seed {seed}>")),
        config,
    }
}

/// Qwen2.5's chat template, in substance: tools listed in the system turn, calls as `<tool_call>` blocks
/// with their arguments as JSON, tool results as a user turn of `<tool_response>` blocks.
pub const QWEN_STYLE_TEMPLATE: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// The tiny chat model with [`QWEN_STYLE_TEMPLATE`] (tool support, Hermes `<tool_call>` markup) and a context
/// of 1024 positions, room for tool descriptions.
pub fn tiny_tools_model(seed: u64) -> LoadedModel {
    let mut model = tiny_chat_model(seed);
    model.tokenizer.chat_template = Some(QWEN_STYLE_TEMPLATE.into());
    model.config.max_position_embeddings = 1024;
    model
}
