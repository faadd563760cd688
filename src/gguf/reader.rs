//! The GGUF container (versions 2 and 3): header, metadata key/values, tensor table, aligned data section.
//!
//! The file is memory-mapped; every length and count read from it is checked against the bytes that remain,
//! so a truncated or corrupt file gives an error naming what broke instead of a panic or a huge allocation.
use super::value::{Metadata, Value};
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One entry of the tensor table. `dims` are GGUF's: `dims[0]` is the fastest-varying (contiguous) axis,
/// the reverse of PyTorch's shape order.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: usize,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub map: Arc<Mmap>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // Safety: the map is read-only; a file changed underneath us while mapped is outside our control,
        // as for every mmap-based loader.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let mut c = Cursor { buf: &map, pos: 0 };
        if c.take(4).context("file too short for a GGUF header")? != b"GGUF" {
            bail!("not a GGUF file (bad magic)");
        }
        let version = c.u32()?;
        if version != 2 && version != 3 {
            bail!("GGUF version {version} is not supported (2 and 3 are)");
        }
        let n_tensors = c.u64().context("reading tensor count")?;
        let n_kv = c.u64().context("reading metadata count")?;
        c.check_count(n_kv, 13, "metadata entries")?;
        c.check_count(n_tensors, 24, "tensors")?;
        let mut metadata = Metadata::new();
        for i in 0..n_kv {
            let key = c.string().with_context(|| format!("reading key of metadata entry {i}"))?;
            let ty = c.u32().with_context(|| format!("reading type of metadata {key:?}"))?;
            let v = c.value(ty, 0).with_context(|| format!("reading metadata {key:?}"))?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string().with_context(|| format!("reading name of tensor {i}"))?;
            let n_dims = c.u32().with_context(|| format!("reading tensor {name:?}"))?;
            if n_dims == 0 || n_dims > 4 {
                bail!("tensor {name:?} has {n_dims} dimensions (GGUF allows 1 to 4)");
            }
            let dims = (0..n_dims)
                .map(|_| c.u64())
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("reading dims of tensor {name:?}"))?;
            let ggml_type = c.u32().with_context(|| format!("reading type of tensor {name:?}"))?;
            let offset = c.u64().with_context(|| format!("reading offset of tensor {name:?}"))?;
            infos.push((name, dims, ggml_type, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a as usize,
                _ => bail!("general.alignment {v:?} is not a power of two"),
            },
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let tensors = infos
            .into_iter()
            .map(|(name, dims, ggml_type, offset)| {
                let offset = usize::try_from(offset).ok().and_then(|o| o.checked_add(data_start));
                match offset {
                    Some(offset) if offset <= map.len() => Ok(TensorInfo { name, dims, ggml_type, offset }),
                    _ => bail!("tensor {name:?} starts past the end of the file (truncated?)"),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        check_regions(&tensors, data_start, alignment, map.len())?;
        Ok(GgufFile { path: path.to_owned(), version, metadata, tensors, map: Arc::new(map) })
    }

    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).with_context(|| format!("missing metadata key {key:?}"))
    }
}

/// Each tensor's data region starts on the alignment, lies inside the file, and overlaps no other (llama.cpp
/// refuses such files too; a region shared by two tensors would alias their weights). Regions of types this
/// reader cannot size are checked for alignment only.
fn check_regions(tensors: &[TensorInfo], data_start: usize, alignment: usize, file_len: usize) -> Result<()> {
    let mut spans = Vec::with_capacity(tensors.len());
    for t in tensors {
        if (t.offset - data_start) % alignment != 0 {
            bail!(
                "tensor {:?}: its data offset {} is not a multiple of the alignment {alignment}",
                t.name,
                t.offset - data_start
            );
        }
        let numel = t.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).and_then(|n| usize::try_from(n).ok());
        let bytes = numel.and_then(|n| super::quant::byte_size(t.ggml_type, n).ok());
        if let Some(bytes) = bytes {
            let end = t.offset.checked_add(bytes).filter(|&e| e <= file_len);
            let end = end.with_context(|| {
                format!(
                    "tensor {:?}: its {bytes} bytes at offset {} run past the end of the file (truncated?)",
                    t.name, t.offset
                )
            })?;
            spans.push((t.offset, end, &t.name));
        }
    }
    spans.sort();
    for w in spans.windows(2) {
        let ((a_start, a_end, a), (b_start, _, b)) = (w[0], w[1]);
        if a_end > b_start {
            bail!("the data of tensors {a:?} (bytes {a_start}..{a_end}) and {b:?} (from {b_start}) overlap");
        }
    }
    Ok(())
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!("unexpected end of file at byte {} (wanted {n} more bytes; truncated?)", self.pos);
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    /// A count of items that each take at least `min_bytes` cannot exceed what is left of the file.
    fn check_count(&self, n: u64, min_bytes: u64, what: &str) -> Result<()> {
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_bytes) > left {
            bail!("header claims {n} {what}, more than the {left} bytes left can hold (corrupt or truncated)");
        }
        Ok(())
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        self.check_count(n, 1, "string bytes")?;
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec()).context("string is not valid UTF-8")
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("invalid bool byte {b}"),
            },
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 4 {
                    bail!("arrays nested too deeply");
                }
                let elem = self.u32()?;
                let n = self.u64()?;
                self.check_count(n, 1, "array elements")?;
                let mut xs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    xs.push(self.value(elem, depth + 1)?);
                }
                Value::Array(xs)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            t => bail!("unknown metadata value type {t}"),
        })
    }
}
