//! GGUF dequantisation and loading: every supported type decoded from hand-built blocks, the real SmolLM2
//! file's config and shapes, corrupt and unsupported files as errors (never panics), and synthetic GGUFs
//! written here from HF-named tensors (undoing the llama q/k permutation, renaming, rope_freqs).
mod common;
use half::{bf16, f16};
use mappa::config::{Arch, ModelConfig};
use mappa::gguf::quant::{self, byte_size, dequantize};
use mappa::gguf::{load_weights, GgufFile};
use mappa::tensor::Weights;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- dequantisation, from hand-built blocks

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// Packs 4-bit values two per byte: byte j holds q[j] low and q[j + q.len() / 2] high (ggml's layout).
fn pack_nibbles(q: &[u8]) -> Vec<u8> {
    let half = q.len() / 2;
    (0..half).map(|j| q[j] | (q[j + half] << 4)).collect()
}

fn assert_values(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "element {i}");
    }
}

#[test]
fn dequant_f32_f16_bf16() {
    let f32s: Vec<u8> = [1.5f32, -0.25, 3e-8].iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_values(&dequantize(quant::F32, &f32s, 3).unwrap(), &[1.5, -0.25, 3e-8]);
    // f16: 0x3E00 = 1.5, 0xC000 = -2, 0x7BFF = 65504 (largest finite).
    let f16s = [0x00, 0x3E, 0x00, 0xC0, 0xFF, 0x7B];
    assert_values(&dequantize(quant::F16, &f16s, 3).unwrap(), &[1.5, -2.0, 65504.0]);
    // bf16: 0x3F80 = 1, 0xBF00 = -0.5, 0x4049 = 3.140625.
    let bf16s = [0x80, 0x3F, 0x00, 0xBF, 0x49, 0x40];
    assert_values(&dequantize(quant::BF16, &bf16s, 3).unwrap(), &[1.0, -0.5, 3.140625]);
    assert_eq!(bf16::from_f32(3.140625).to_le_bytes(), [0x49, 0x40]);
}

#[test]
fn dequant_q4_0() {
    // Block 1: d = 0.5, q[j] = j for j < 16 and q[16 + j] = 15 - j. Block 2: d = -2, every q = 8 except q[5] = 0.
    let q1: Vec<u8> = (0..16).chain((0..16).map(|j| 15 - j)).collect();
    let mut q2 = vec![8u8; 32];
    q2[5] = 0;
    let bytes = [&h(0.5)[..], &pack_nibbles(&q1), &h(-2.0), &pack_nibbles(&q2)].concat();
    let got = dequantize(quant::Q4_0, &bytes, 64).unwrap();
    let mut want: Vec<f32> =
        (0..16).map(|j| (j as f32 - 8.0) * 0.5).chain((0..16).map(|j| (7 - j) as f32 * 0.5)).collect();
    want.extend((0..32).map(|e| if e == 5 { 16.0 } else { 0.0 }));
    assert_values(&got, &want);
    assert_eq!(&got[..3], &[-4.0, -3.5, -3.0]);
    assert_eq!(got[16], 3.5);
}

#[test]
fn dequant_q4_1() {
    // d = 0.25, m = -1.5: x = q / 4 - 1.5.
    let q: Vec<u8> = (0..32).map(|e| (e * 3 % 16) as u8).collect();
    let bytes = [&h(0.25)[..], &h(-1.5), &pack_nibbles(&q)].concat();
    let want: Vec<f32> = q.iter().map(|&q| q as f32 * 0.25 - 1.5).collect();
    let got = dequantize(quant::Q4_1, &bytes, 32).unwrap();
    assert_values(&got, &want);
    assert_eq!((got[0], got[1], got[5]), (-1.5, -0.75, 2.25)); // q = 0, 3, 15
}

#[test]
fn dequant_q5_0() {
    // Block 1: d = 1, fifth bits set for elements 16..32 only; q low nibbles j (e < 16) and 15 - j (16 + j).
    let q: Vec<u8> = (0..16).chain((0..16).map(|j| 15 - j)).collect();
    let block1 = [&h(1.0)[..], &0xFFFF_0000u32.to_le_bytes(), &pack_nibbles(&q)].concat();
    // Block 2: d = 0.5, nibbles all 0, fifth bit only for elements 3 and 20: those are 0, the rest -16 * 0.5.
    let block2 = [&h(0.5)[..], &((1u32 << 3) | (1 << 20)).to_le_bytes(), &[0u8; 16]].concat();
    let got = dequantize(quant::Q5_0, &[block1, block2].concat(), 64).unwrap();
    let mut want: Vec<f32> = (0..16).map(|j| j as f32 - 16.0).chain((0..16).map(|j| 15.0 - j as f32)).collect();
    want.extend((0..32).map(|e| if e == 3 || e == 20 { 0.0 } else { -8.0 }));
    assert_values(&got, &want);
}

#[test]
fn dequant_q8_0() {
    // d = 0.5, q = e - 16; second block d = 1 with the extremes -128 and 127.
    let q1: Vec<u8> = (0..32).map(|e| (e as i8 - 16) as u8).collect();
    let mut q2 = vec![0u8; 32];
    q2[0] = (-128i8) as u8;
    q2[31] = 127;
    let bytes = [&h(0.5)[..], &q1, &h(1.0), &q2].concat();
    let got = dequantize(quant::Q8_0, &bytes, 64).unwrap();
    let mut want: Vec<f32> = (0..32).map(|e| (e as f32 - 16.0) * 0.5).collect();
    want.extend((0..32).map(|e| match e {
        0 => -128.0,
        31 => 127.0,
        _ => 0.0,
    }));
    assert_values(&got, &want);
}

#[test]
fn dequant_spreads_many_blocks_over_threads() {
    // 5000 Q8_0 blocks (more than one parallel task): block b has d = (b % 64) / 4 (exact in f16), every q = 2.
    let bytes: Vec<u8> = (0..5000).flat_map(|b| [&h((b % 64) as f32 / 4.0)[..], &[2u8; 32]].concat()).collect();
    let got = dequantize(quant::Q8_0, &bytes, 5000 * 32).unwrap();
    for (e, &x) in got.iter().enumerate() {
        assert_eq!(x, (e / 32 % 64) as f32 / 2.0, "element {e}");
    }
}

/// Q4_K's 12 bytes for 8 six-bit scales and mins: sub-blocks 0..4 in the low 6 bits of bytes j (scale) and
/// j + 4 (min); sub-blocks 4..8 as a low/high nibble pair in byte j + 4, their top 2 bits in the top bits of
/// bytes j - 4 (scale) and j (min).
fn pack_q4_k_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&sc[..4]);
    b[4..8].copy_from_slice(&m[..4]);
    for j in 4..8 {
        b[j + 4] = (sc[j] & 15) | ((m[j] & 15) << 4);
        b[j - 4] |= (sc[j] >> 4) << 6;
        b[j] |= (m[j] >> 4) << 6;
    }
    b
}

#[test]
fn dequant_q4_k() {
    let sc = [1, 2, 3, 63, 17, 33, 48, 5];
    let m = [0, 1, 62, 3, 20, 40, 63, 7];
    let q: Vec<u8> = (0..256).map(|e| (e * 7 % 16) as u8).collect();
    // Nibbles in 4 groups of 32 bytes, each group holding 64 elements (low nibbles first).
    let qs: Vec<u8> = q.chunks(64).flat_map(pack_nibbles).collect();
    let bytes = [&h(0.5)[..], &h(0.25), &pack_q4_k_scales(&sc, &m), &qs].concat();
    assert_eq!(bytes.len(), 144);
    let got = dequantize(quant::Q4_K, &bytes, 256).unwrap();
    let want: Vec<f32> = (0..256).map(|e| 0.5 * sc[e / 32] as f32 * q[e] as f32 - 0.25 * m[e / 32] as f32).collect();
    assert_values(&got, &want);
    // Element 200: sub-block 6 (scale 48, min 63), q = 1400 % 16 = 8.
    assert_eq!(got[200], 0.5 * 48.0 * 8.0 - 0.25 * 63.0);
    assert_eq!(got[200], 176.25);
}

#[test]
fn dequant_q6_k() {
    let q: Vec<u8> = (0..256).map(|e| ((e * 5 + 3) % 64) as u8).collect();
    let scales: Vec<i8> = (0..16).map(|i| i * 3 - 20).collect();
    // Per half of 128: low nibbles of elements r and r + 64 share byte r % 64 (low, high); the top 2 bits of
    // elements r, r + 32, r + 64, r + 96 share byte r % 32 at bit 0, 2, 4, 6.
    let (mut ql, mut qh) = (vec![0u8; 128], vec![0u8; 64]);
    for (e, &q) in q.iter().enumerate() {
        let (half, r) = (e / 128, e % 128);
        ql[64 * half + r % 64] |= (q & 15) << (4 * (r / 64));
        qh[32 * half + r % 32] |= (q >> 4) << (2 * (r / 32));
    }
    let sc_bytes: Vec<u8> = scales.iter().map(|&s| s as u8).collect();
    let bytes = [&ql[..], &qh, &sc_bytes, &h(0.125)].concat();
    assert_eq!(bytes.len(), 210);
    let got = dequantize(quant::Q6_K, &bytes, 256).unwrap();
    let want: Vec<f32> = (0..256).map(|e| 0.125 * scales[e / 16] as f32 * (q[e] as f32 - 32.0)).collect();
    assert_values(&got, &want);
    assert_eq!(got[0], 72.5); // q = 3, scale -20: 0.125 * -20 * -29
    assert_eq!(got[255], 93.75); // q = 62, scale 25: 0.125 * 25 * 30
}

#[test]
fn dequant_rejects_bad_lengths_and_unsupported_types() {
    assert_eq!(byte_size(quant::Q4_K, 512).unwrap(), 288);
    assert_eq!(byte_size(quant::Q6_K, 256).unwrap(), 210);
    assert_eq!(byte_size(quant::Q8_0, 64).unwrap(), 68);
    assert_eq!(byte_size(quant::F16, 3).unwrap(), 6);
    assert!(byte_size(quant::Q4_0, 33).is_err());
    assert!(dequantize(quant::Q4_0, &[0; 17], 32).unwrap_err().to_string().contains("18 bytes"));
    assert!(dequantize(quant::Q4_0, &[0; 18], 31).unwrap_err().to_string().contains("whole number"));
    assert!(dequantize(quant::Q6_K, &[0; 210], 128).is_err());
    for (ty, name) in
        [(7, "Q5_1"), (10, "Q2_K"), (11, "Q3_K"), (13, "Q5_K"), (16, "IQ2_XXS"), (23, "IQ4_XS"), (999, "type 999")]
    {
        let err = dequantize(ty, &[0; 64], 32).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains("not supported"), "{err}");
        assert_eq!(quant::type_name(ty), name);
    }
}

// ---------------------------------------------------------------- a tiny GGUF writer

enum Meta {
    Str(String),
    U32(u32),
    F32(f32),
    Strs(Vec<String>),
}

struct RawTensor {
    name: String,
    /// GGUF order: dims[0] is the contiguous axis.
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn pad32(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(32), 0);
}

/// A GGUF v3 file: header, metadata, tensor table, then the 32-aligned data section.
fn gguf_bytes(meta: &[(String, Meta)], tensors: &[RawTensor]) -> Vec<u8> {
    gguf_bytes_at(meta, tensors, &[])
}

/// `gguf_bytes`, with the tensor table's data offsets of the first tensors replaced by `offsets` (the data
/// itself stays where `gguf_bytes` puts it).
fn gguf_bytes_at(meta: &[(String, Meta)], tensors: &[RawTensor], offsets: &[u64]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        put_str(&mut out, key);
        match value {
            Meta::U32(x) => out.extend([&4u32.to_le_bytes()[..], &x.to_le_bytes()].concat()),
            Meta::F32(x) => out.extend([&6u32.to_le_bytes()[..], &x.to_le_bytes()].concat()),
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Meta::Strs(xs) => {
                out.extend([&9u32.to_le_bytes()[..], &8u32.to_le_bytes(), &(xs.len() as u64).to_le_bytes()].concat());
                xs.iter().for_each(|s| put_str(&mut out, s));
            }
        }
    }
    let mut offset = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(t.ggml_type.to_le_bytes());
        out.extend(offsets.get(i).copied().unwrap_or(offset).to_le_bytes());
        offset = (offset + t.data.len() as u64).next_multiple_of(32);
    }
    for t in tensors {
        pad32(&mut out);
        out.extend(&t.data);
    }
    out
}

/// The metadata llama.cpp writes for `c`.
fn config_meta(c: &ModelConfig) -> Vec<(String, Meta)> {
    let a = c.arch.model_type();
    let mut m = vec![("general.architecture".to_owned(), Meta::Str(a.to_owned()))];
    let u = |k: &str, v: usize| (format!("{a}.{k}"), Meta::U32(v as u32));
    m.extend([
        u("block_count", c.num_layers),
        u("context_length", c.max_position_embeddings),
        u("embedding_length", c.hidden_size),
        u("feed_forward_length", c.intermediate_size),
        u("attention.head_count", c.num_heads),
        u("attention.head_count_kv", c.num_kv_heads),
        u("attention.key_length", c.head_dim),
    ]);
    m.push((format!("{a}.rope.freq_base"), Meta::F32(c.rope_theta)));
    m.push((format!("{a}.attention.layer_norm_rms_epsilon"), Meta::F32(c.rms_norm_eps)));
    m.push(("tokenizer.ggml.tokens".to_owned(), Meta::Strs((0..c.vocab_size).map(|i| format!("t{i}")).collect())));
    m.push(("tokenizer.ggml.bos_token_id".to_owned(), Meta::U32(c.bos_token_id.unwrap())));
    m.push(("tokenizer.ggml.eos_token_id".to_owned(), Meta::U32(c.eos_token_ids[0])));
    m
}

/// The converter's HF -> GGUF row order for llama q/k:
/// `w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
fn converter_permute(w: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    let cols = w.len() / rows;
    let half = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    for head in 0..n_head {
        for i in 0..half {
            for s in 0..2 {
                let src = head * 2 * half + s * half + i;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// HF name -> GGUF name, as llama.cpp's converter maps them.
fn gguf_name(hf: &str) -> String {
    let global = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = global.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (part, kind) = rest.rsplit_once('.').unwrap();
    let g = match part {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{g}.{kind}")
}

fn f32_tensor(name: &str, shape: &[usize], values: &[f32]) -> RawTensor {
    RawTensor {
        name: name.to_owned(),
        dims: shape.iter().rev().map(|&d| d as u64).collect(),
        ggml_type: quant::F32,
        data: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The tensors llama.cpp would write for `w`: GGUF names, reversed dims, llama q/k rows permuted.
fn gguf_tensors(c: &ModelConfig, w: &Weights) -> Vec<RawTensor> {
    w.tensors
        .iter()
        .map(|(name, t)| {
            let mut values = t.to_f32();
            let heads = match name {
                n if n.contains("q_proj") => Some(c.num_heads),
                n if n.contains("k_proj") => Some(c.num_kv_heads),
                _ => None,
            };
            if let (Arch::Llama, Some(heads)) = (c.arch, heads) {
                values = converter_permute(&values, t.shape[0], heads);
            }
            f32_tensor(&gguf_name(name), &t.shape, &values)
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The whole error chain of loading the weights of `path`.
fn weights_err(path: &Path) -> String {
    match GgufFile::open(path).and_then(|f| load_weights(&f)) {
        Ok(_) => panic!("{} loaded, but should not", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn tiny_file(c: &ModelConfig, seed: u64) -> (Vec<(String, Meta)>, Vec<RawTensor>, Weights) {
    let w = common::random_weights(c, seed);
    (config_meta(c), gguf_tensors(c, &w), w)
}

// ---------------------------------------------------------------- synthetic files

fn roundtrip(c: &ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let (meta, tensors, want) = tiny_file(c, 7);
    let path = write(dir.path(), "tiny.gguf", &gguf_bytes(&meta, &tensors));
    let (config, got) = load_weights(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(&config, c);
    assert_eq!(got.tensors.keys().collect::<Vec<_>>(), want.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &want.tensors {
        let g = &got.tensors[name];
        assert_eq!(g.shape, t.shape, "{name}");
        assert_eq!(g.to_f32(), t.to_f32(), "{name}");
    }
}

#[test]
fn llama_q_k_rows_are_unpermuted() {
    // With biases too: the converter permutes them like 1-column weights.
    let mut c = common::tiny_config(Arch::Llama);
    c.attention_bias = true;
    roundtrip(&c);
    roundtrip(&common::tiny_config(Arch::Llama));
}

#[test]
fn qwen2_and_qwen3_load_unpermuted() {
    roundtrip(&common::tiny_config(Arch::Qwen2));
    roundtrip(&common::tiny_config(Arch::Qwen3));
}

#[test]
fn converter_permutation_interleaves_rotation_pairs() {
    // One head of 4 rows (1 column): HF rows [a, b, c, d] pair (a, c) and (b, d) for rotate-half; the
    // converter interleaves them to [a, c, b, d]. (Checks the direction the round trips above rely on.)
    assert_eq!(converter_permute(&[1.0, 2.0, 3.0, 4.0], 4, 1), vec![1.0, 3.0, 2.0, 4.0]);
}

#[test]
fn rope_freqs_become_llama3_scaling() {
    // Llama 3.2-like RoPE (theta 500000, head size 64, factor 32, low 1, high 4, original 8192), written as
    // llama.cpp's converter does: one divisor per frequency.
    let mut c = common::tiny_config(Arch::Llama);
    (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.rope_theta) = (128, 2, 1, 64, 500000.0);
    let (factor, low, high, old) = (32.0f64, 1.0, 4.0, 8192.0);
    let divisors: Vec<f32> = (0..32)
        .map(|i| {
            let freq = 1.0 / 500000f64.powf(2.0 * i as f64 / 64.0);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor as f32
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (meta, mut tensors, _) = tiny_file(&c, 3);
    tensors.push(f32_tensor("rope_freqs.weight", &[32], &divisors));
    let path = write(dir.path(), "llama3.gguf", &gguf_bytes(&meta, &tensors));
    let (config, _) = load_weights(&GgufFile::open(&path).unwrap()).unwrap();
    let s = config.rope_scaling.expect("rope scaling");
    assert_eq!((s.factor, s.low_freq_factor, s.original_max_position_embeddings), (32.0, 1.0, 8192));
    assert!((s.high_freq_factor - 4.0).abs() < 1e-3, "{s:?}");

    // Divisors that no Llama 3 scaling produces are refused, naming the tensor.
    let mut bad = divisors.clone();
    bad[3] = 2.0;
    tensors.pop();
    tensors.push(f32_tensor("rope_freqs.weight", &[32], &bad));
    let err = weights_err(&write(dir.path(), "bad.gguf", &gguf_bytes(&meta, &tensors)));
    assert!(err.contains("rope_freqs.weight") && err.contains("Llama 3"), "{err}");
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut meta, tensors, _) = tiny_file(&common::tiny_config(Arch::Llama), 1);
    meta[0].1 = Meta::Str("gpt2".into());
    let path = write(dir.path(), "gpt2.gguf", &gguf_bytes(&meta, &tensors));
    let err = format!("{:#}", mappa::loader::load(&path).err().unwrap());
    assert!(err.contains("unsupported architecture \"gpt2\"") && err.contains("gpt2.gguf"), "{err}");
}

#[test]
fn unsupported_quant_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let c = common::tiny_config(Arch::Llama);
    let (meta, mut tensors, _) = tiny_file(&c, 1);
    // ffn_up as Q5_1 (type 7, 24 bytes per 32 values): the right size, an unsupported type.
    let up = tensors.iter_mut().find(|t| t.name == "blk.1.ffn_up.weight").unwrap();
    up.ggml_type = 7;
    up.data = vec![0; c.intermediate_size * c.hidden_size / 32 * 24];
    let err = weights_err(&write(dir.path(), "q5_1.gguf", &gguf_bytes(&meta, &tensors)));
    assert!(err.contains("blk.1.ffn_up.weight") && err.contains("Q5_1") && err.contains("not supported"), "{err}");
}

#[test]
fn bad_magic_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, tensors, _) = tiny_file(&common::tiny_config(Arch::Llama), 1);
    let mut bytes = gguf_bytes(&meta, &tensors);
    bytes[..4].copy_from_slice(b"GGUX");
    let path = write(dir.path(), "magic.gguf", &bytes);
    assert!(weights_err(&path).contains("bad magic"));
    let err = format!("{:#}", mappa::loader::load(&path).err().unwrap());
    assert!(err.contains("magic"), "{err}");
}

#[test]
fn missing_metadata_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut meta, tensors, _) = tiny_file(&common::tiny_config(Arch::Qwen2), 1);
    meta.retain(|(k, _)| k != "qwen2.block_count");
    let err = weights_err(&write(dir.path(), "nokey.gguf", &gguf_bytes(&meta, &tensors)));
    assert!(err.contains("missing metadata key \"qwen2.block_count\""), "{err}");
}

#[test]
fn missing_wrong_and_unknown_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, tensors, _) = tiny_file(&common::tiny_config(Arch::Qwen3), 1);
    let mut fewer = tensors;
    let gone = fewer.iter().position(|t| t.name == "blk.1.attn_k_norm.weight").unwrap();
    let removed = fewer.remove(gone);
    let err = weights_err(&write(dir.path(), "missing.gguf", &gguf_bytes(&meta, &fewer)));
    assert!(err.contains("missing tensor \"model.layers.1.self_attn.k_norm.weight\""), "{err}");

    let mut wrong = fewer;
    wrong.push(f32_tensor(&removed.name, &[4], &[1.0; 4]));
    let err = weights_err(&write(dir.path(), "shape.gguf", &gguf_bytes(&meta, &wrong)));
    assert!(err.contains("model.layers.1.self_attn.k_norm.weight") && err.contains("shape [4]"), "{err}");

    let mut unknown = wrong;
    unknown.push(f32_tensor("blk.0.mystery.weight", &[4], &[1.0; 4]));
    let err = weights_err(&write(dir.path(), "unknown.gguf", &gguf_bytes(&meta, &unknown)));
    assert!(err.contains("\"blk.0.mystery.weight\"") && err.contains("unknown GGUF tensor name"), "{err}");
}

/// Found by fuzzing (fuzz/corpus/gguf/crash-*): a llama q or k projection with a zero-sized dimension reached
/// the row un-permutation, which divided by the row count and cut rows of zero columns (both panics). It is now
/// an empty tensor like any other, refused for its shape.
#[test]
fn zero_sized_q_k_projections_are_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let c = common::tiny_config(Arch::Llama);
    for (name, dims) in [("blk.0.attn_q.weight", [48u64, 0]), ("blk.1.attn_k.weight", [0, 16])] {
        let (meta, mut tensors, _) = tiny_file(&c, 2);
        let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
        (t.dims, t.data) = (dims.to_vec(), Vec::new());
        let err = weights_err(&write(dir.path(), "empty.gguf", &gguf_bytes(&meta, &tensors)));
        assert!(err.contains("_proj.weight") && err.contains("shape ["), "{name} {dims:?}: {err}");
    }
}

// ---------------------------------------------------------------- the real SmolLM2 file

#[test]
fn smollm2_config_and_shapes() {
    let (c, w) = load_weights(&GgufFile::open(&common::smollm2_gguf()).unwrap()).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!((c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim), (30, 576, 9, 3, 64));
    assert_eq!((c.intermediate_size, c.vocab_size, c.max_position_embeddings), (1536, 49152, 8192));
    assert_eq!(c.rope_theta, 100000.0);
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert!(c.tie_word_embeddings && !c.attention_bias && !c.qk_norm && c.rope_scaling.is_none());
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(1), &[2][..]));
    assert_eq!(w.get("model.embed_tokens.weight").unwrap().shape, [49152, 576]);
    assert_eq!(w.get("model.layers.29.self_attn.k_proj.weight").unwrap().shape, [192, 576]);
    assert_eq!(w.get("model.layers.0.mlp.down_proj.weight").unwrap().shape, [576, 1536]);
    assert_eq!(w.tensors.len(), 2 + 30 * 9);
    let norm = w.get("model.norm.weight").unwrap().to_f32();
    assert!(norm.iter().all(|x| x.is_finite()) && norm.iter().any(|&x| x != 0.0));
}

#[test]
fn truncated_smollm2_is_an_error_saying_what_broke() {
    let full = std::fs::read(common::smollm2_gguf()).unwrap();
    let file = GgufFile::open(&common::smollm2_gguf()).unwrap();
    // The data section starts at the first tensor's offset; the tensor table ends just before it.
    let data_start = file.tensors.iter().map(|t| t.offset).min().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cuts = [
        (10, "header", "truncated"),
        (20_000, "metadata (token list)", "metadata"),
        (1_000_000, "metadata (merges)", "metadata"),
        (data_start - 200, "tensor table", "reading"),
        ((data_start + full.len()) / 2, "tensor data (middle)", "truncated"),
        (full.len() - 1000, "tensor data (end)", "truncated"),
    ];
    for (at, what, says) in cuts {
        let path = write(dir.path(), "cut.gguf", &full[..at]);
        let err = match mappa::loader::load(&path) {
            Ok(_) => panic!("cut in the {what} at {at} loaded"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(says) && err.contains("cut.gguf"), "cut in the {what}: {err}");
        if what.starts_with("tensor") {
            assert!(err.contains("tensor"), "cut in the {what} names no tensor: {err}");
        }
    }
}

/// Tensor data regions must start on the alignment and must not overlap (llama.cpp refuses both); both
/// loaded before, aliasing or shifting weights.
#[test]
fn misaligned_or_overlapping_tensor_data_is_refused() {
    let c = common::tiny_config(Arch::Llama);
    let dir = tempfile::tempdir().unwrap();
    let (meta, tensors, _) = tiny_file(&c, 3);
    let second = (tensors[0].data.len() as u64).next_multiple_of(32);
    let cases = [
        (vec![0, second + 4], "not a multiple of the alignment 32"),
        (vec![0, 0], "overlap"),
        (vec![0, 32], "overlap"),
    ];
    for (offsets, says) in cases {
        let path = write(dir.path(), "bad.gguf", &gguf_bytes_at(&meta, &tensors, &offsets));
        let err = match GgufFile::open(&path) {
            Ok(_) => panic!("offsets {offsets:?} opened"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(says) && err.contains(&tensors[1].name), "{offsets:?}: {err}");
    }
}

/// A NaN or infinite weight is refused when the model is built, naming the tensor; so are an end-of-text id
/// outside the vocabulary and a context of zero positions.
#[test]
fn non_finite_weights_and_out_of_range_ids_are_refused() {
    let c = common::tiny_config(Arch::Qwen2);
    let dir = tempfile::tempdir().unwrap();
    let (meta, mut tensors, _) = tiny_file(&c, 4);
    let victim = tensors.iter().position(|t| t.name.contains("ffn_down")).expect("a down projection");
    tensors[victim].data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = write(dir.path(), "nan.gguf", &gguf_bytes(&meta, &tensors));
    let (config, weights) = load_weights(&GgufFile::open(&path).unwrap()).unwrap();
    let tokenizer = common::tiny_tokenizer(config.vocab_size);
    let loaded = mappa::loader::LoadedModel { config, weights, tokenizer, path };
    let err =
        format!("{:#}", mappa::model::load(&loaded, mappa::model::Backend::Cpu).err().expect("NaN weights built"));
    assert!(err.contains("non-finite") && err.contains("mlp.down_proj"), "{err}");

    for (edit, says) in [
        (
            (|c: &mut ModelConfig| c.eos_token_ids = vec![c.vocab_size as u32]) as fn(&mut ModelConfig),
            "outside the vocabulary",
        ),
        (|c| c.bos_token_id = Some(u32::MAX), "outside the vocabulary"),
        (|c| c.max_position_embeddings = 0, "max_position_embeddings must be in [1, "),
        (|c| c.vocab_size = usize::MAX, "vocab_size must be in [1, "),
    ] {
        let mut bad = c.clone();
        edit(&mut bad);
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
}
