//! Weight storage for the CPU backend: f32 buffers in anonymous memory maps advised for transparent huge
//! pages. Decode streams every weight once per token; with 4 KiB pages that is ~130k TLB misses per token
//! for SmolLM2, and 2 MiB pages made the decode GEMVs ~10 % faster on the 2-core dev machine (BENCHMARKS.md).
//! Where the advice is refused (THP off, non-Linux) the buffer works the same with small pages.
use anyhow::{Context, Result};
use memmap2::MmapMut;
use std::ops::Deref;

pub struct HugeBuf {
    map: MmapMut,
    len: usize,
}

impl HugeBuf {
    pub fn new(values: &[f32]) -> Result<HugeBuf> {
        // map_anon rejects a zero length; one spare float keeps empty tensors legal.
        let mut map = MmapMut::map_anon(values.len().max(1) * 4).context("allocating weight memory")?;
        // Advise before the first write, so the pages are faulted in huge.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        bytemuck::cast_slice_mut::<u8, f32>(&mut map[..values.len() * 4]).copy_from_slice(values);
        Ok(HugeBuf { map, len: values.len() })
    }
}

impl Deref for HugeBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // An anonymous map is page-aligned, so the cast cannot fail.
        bytemuck::cast_slice(&self.map[..self.len * 4])
    }
}
