//! Tensors as loaded from a checkpoint: a shape, a dtype and bytes that are either a zero-copy view into a
//! memory-mapped file (safetensors) or owned f32 values (dequantised GGUF). Names follow Hugging Face
//! (`model.layers.3.self_attn.q_proj.weight`), whatever the file format, and shapes are PyTorch's
//! (row-major, `[out_features, in_features]` for linear weights).
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

#[derive(Clone)]
enum Data {
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    F32(Arc<Vec<f32>>),
}

#[derive(Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    data: Data,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.dtype, self.shape)
    }
}

impl Tensor {
    pub fn from_f32(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape {shape:?} does not match {} values",
            values.len()
        );
        Tensor { shape, dtype: DType::F32, data: Data::F32(Arc::new(values)) }
    }

    /// A view of `range` inside `map`; the byte length must match shape and dtype.
    pub fn mapped(shape: Vec<usize>, dtype: DType, map: Arc<Mmap>, range: Range<usize>) -> Result<Tensor> {
        let want = shape.iter().product::<usize>() * dtype.size();
        if range.len() != want {
            bail!("tensor of shape {shape:?} {dtype:?} needs {want} bytes but has {}", range.len());
        }
        if range.end > map.len() {
            bail!("tensor bytes {range:?} lie past the end of the file ({} bytes)", map.len());
        }
        Ok(Tensor { shape, dtype, data: Data::Mapped { map, range } })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The raw little-endian bytes, borrowed (no copy).
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Mapped { map, range } => &map[range.clone()],
            Data::F32(v) => bytemuck::cast_slice(v.as_slice()),
        }
    }

    /// The values as f32 (a copy; exact for every dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes();
        match self.dtype {
            DType::F32 => match &self.data {
                Data::F32(v) => v.as_ref().clone(),
                Data::Mapped { .. } => {
                    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                }
            },
            DType::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        }
    }
}

/// All tensors of one model, by Hugging Face name.
#[derive(Clone, Default)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).with_context(|| format!("missing tensor {name:?}"))
    }

    /// The tensor, checked against the shape the config implies.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            bail!("tensor {name:?} has shape {:?}, the config implies {shape:?}", t.shape);
        }
        Ok(t)
    }
}
