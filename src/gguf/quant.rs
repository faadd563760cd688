//! ggml tensor types: their names, their sizes in bytes, and dequantisation to f32.
//!
//! Each supported type is a block layout (a number of elements stored in a fixed number of bytes) and a
//! function decoding one block, written from ggml's block definitions. Quantised GGUF tensors are turned into
//! f32 once, at load time, so every backend sees plain float tensors.
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use rayon::prelude::*;

pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q5_0: u32 = 6;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const Q6_K: u32 = 14;
pub const BF16: u32 = 30;

/// ggml's names by type id, including types we do not decode (and ids ggml has since retired), so that
/// messages can say which type a file uses.
#[rustfmt::skip]
const NAMES: [&str; 40] = [
    "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16",
    "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4",
    "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
];

/// The type's ggml name, or `type N` for an id ggml does not define.
pub fn type_name(ggml_type: u32) -> String {
    match NAMES.get(ggml_type as usize) {
        Some(name) => (*name).to_owned(),
        None => format!("type {ggml_type}"),
    }
}

/// Turns one block's bytes into its values.
type Decode = fn(&[u8], &mut [f32]);

/// `block` elements stored in `bytes` bytes.
struct Layout {
    block: usize,
    bytes: usize,
    decode: Decode,
}

fn layout(ggml_type: u32) -> Result<Layout> {
    let (block, bytes, decode): (usize, usize, Decode) = match ggml_type {
        F32 => (1, 4, decode_f32),
        F16 => (1, 2, decode_f16),
        BF16 => (1, 2, decode_bf16),
        Q4_0 => (32, 18, decode_q4_0),
        Q4_1 => (32, 20, decode_q4_1),
        Q5_0 => (32, 22, decode_q5_0),
        Q8_0 => (32, 34, decode_q8_0),
        Q4_K => (256, 144, decode_q4_k),
        Q6_K => (256, 210, decode_q6_k),
        t => bail!(
            "tensor type {} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K)",
            type_name(t)
        ),
    };
    Ok(Layout { block, bytes, decode })
}

/// Bytes that `n` elements of the type take; `n` must be a whole number of blocks.
pub fn byte_size(ggml_type: u32, n: usize) -> Result<usize> {
    let l = layout(ggml_type)?;
    if n % l.block != 0 {
        bail!("{n} elements are not a whole number of {} blocks ({} elements each)", type_name(ggml_type), l.block);
    }
    (n / l.block)
        .checked_mul(l.bytes)
        .with_context(|| format!("{n} {} elements overflow the address space", type_name(ggml_type)))
}

/// Values per rayon task: large enough that scheduling costs nothing next to decoding.
const TASK_ELEMS: usize = 1 << 16;

/// Decodes `n` elements of the type from exactly `byte_size(ggml_type, n)` bytes.
pub fn dequantize(ggml_type: u32, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let l = layout(ggml_type)?;
    let want = byte_size(ggml_type, n)?;
    if bytes.len() != want {
        bail!("{n} {} elements take {want} bytes, got {}", type_name(ggml_type), bytes.len());
    }
    let blocks_per_task = (TASK_ELEMS / l.block).max(1);
    let mut out = vec![0f32; n];
    out.par_chunks_mut(blocks_per_task * l.block).zip(bytes.par_chunks(blocks_per_task * l.bytes)).for_each(
        |(out, bytes)| {
            for (y, b) in out.chunks_exact_mut(l.block).zip(bytes.chunks_exact(l.bytes)) {
                (l.decode)(b, y);
            }
        },
    );
    Ok(out)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Element `e` of a group packed two per byte: byte j holds element j in its low nibble and element
/// j + qs.len() in its high one (the layout of every 4-bit ggml type, block or sub-block).
fn nibble(qs: &[u8], e: usize) -> u8 {
    match qs.get(e) {
        Some(b) => b & 0xF,
        None => qs[e - qs.len()] >> 4,
    }
}

fn decode_f32(b: &[u8], y: &mut [f32]) {
    y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

fn decode_f16(b: &[u8], y: &mut [f32]) {
    y[0] = f16_at(b, 0);
}

fn decode_bf16(b: &[u8], y: &mut [f32]) {
    y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
}

/// f16 scale d, 16 bytes of nibbles; x = (q - 8) * d.
fn decode_q4_0(b: &[u8], y: &mut [f32]) {
    let (d, qs) = (f16_at(b, 0), &b[2..18]);
    for (e, y) in y.iter_mut().enumerate() {
        *y = (nibble(qs, e) as f32 - 8.0) * d;
    }
}

/// f16 scale d, f16 offset m, 16 bytes of nibbles; x = q * d + m.
fn decode_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..20]);
    for (e, y) in y.iter_mut().enumerate() {
        *y = nibble(qs, e) as f32 * d + m;
    }
}

/// f16 scale d, a u32 whose bit e is element e's fifth bit, 16 bytes of nibbles; x = (q - 16) * d.
fn decode_q5_0(b: &[u8], y: &mut [f32]) {
    let (d, qh, qs) = (f16_at(b, 0), u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22]);
    for (e, y) in y.iter_mut().enumerate() {
        let q = nibble(qs, e) | ((((qh >> e) & 1) as u8) << 4);
        *y = (q as f32 - 16.0) * d;
    }
}

/// f16 scale d, 32 signed bytes; x = q * d.
fn decode_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = q as i8 as f32 * d;
    }
}

/// Scale and min (6 bits each) of sub-block j of a Q4_K super-block, packed in 12 bytes: sub-blocks 0..4 use
/// the low 6 bits of bytes j and j + 4; sub-blocks 4..8 a nibble of byte j + 4 plus the top 2 bits of bytes
/// j - 4 (scale) and j (min).
fn q4_k_scale_min(sc: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (sc[j] & 63, sc[j + 4] & 63)
    } else {
        ((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4))
    }
}

/// 256 elements in 8 sub-blocks of 32: f16 d, f16 dmin, 12 bytes of scales/mins, then 4 groups of 32 bytes of
/// nibbles, each holding 64 elements (two sub-blocks); x = d * scale * q - dmin * min.
fn decode_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin, sc, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..16], &b[16..144]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (scale, min) = q4_k_scale_min(sc, j);
        let (d1, m1) = (d * scale as f32, dmin * min as f32);
        let group = &qs[32 * (j / 2)..][..32];
        for (l, y) in y.iter_mut().enumerate() {
            *y = d1 * nibble(group, 32 * (j % 2) + l) as f32 - m1;
        }
    }
}

/// 256 elements: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed scales (one per 16
/// elements), f16 d; x = d * scale * (q - 32). Each half of 128 elements takes 64 bytes of nibbles and 32 bytes
/// of high bits: byte l of those holds the high bits of elements l, l + 32, l + 64, l + 96 (2 bits each).
fn decode_q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16_at(b, 208));
    for (e, y) in y.iter_mut().enumerate() {
        let (half, r) = (e / 128, e % 128);
        let low = nibble(&ql[64 * half..][..64], r);
        let high = (qh[32 * half + r % 32] >> (2 * (r / 32))) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        *y = d * (sc[e / 16] as i8 as f32) * q as f32;
    }
}
