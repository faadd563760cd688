//! Weight storage for the CPU backend: every parameter of a model in one anonymous memory map advised for
//! transparent huge pages, each tensor a range of it. Decode streams every weight once per token; with 4 KiB
//! pages that is ~130k TLB misses per token for SmolLM2, and huge pages made the decode GEMVs ~10 % faster on
//! the 2-core dev machine (BENCHMARKS.md). One map rather than one per matrix, because only the 2 MiB-aligned
//! interior of a map can be huge: separate maps of 1-7 MiB left 40 % of SmolLM2 on small pages.
//! Where the advice is refused (THP off, non-Linux) everything works the same with small pages.
use anyhow::{Context, Result};
use memmap2::MmapMut;
use std::ops::{Index, IndexMut, Range};

/// Collects tensors, then lays them out in one `Arena`.
#[derive(Default)]
pub struct ArenaBuilder {
    parts: Vec<Vec<f32>>,
    len: usize,
}

impl ArenaBuilder {
    /// Where `values` will live in the arena. Each part starts on a 64-byte cache line.
    pub fn push(&mut self, values: Vec<f32>) -> Range<usize> {
        let start = self.len.next_multiple_of(16);
        self.len = start + values.len();
        self.parts.push(values);
        start..self.len
    }

    pub fn build(self) -> Result<Arena> {
        // map_anon rejects a zero length; one spare float keeps an empty arena legal.
        let mut map = MmapMut::map_anon(self.len.max(1) * 4).context("allocating weight memory")?;
        // Advise before the first write, so the pages are faulted in huge.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let all: &mut [f32] = bytemuck::cast_slice_mut(&mut map[..self.len * 4]);
        let mut at = 0usize;
        for part in self.parts {
            at = at.next_multiple_of(16);
            all[at..at + part.len()].copy_from_slice(&part);
            at += part.len();
        }
        Ok(Arena { map, len: self.len })
    }
}

pub struct Arena {
    map: MmapMut,
    len: usize,
}

impl Arena {
    /// Floats in the arena, alignment gaps included (they hold zeros).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[f32] {
        // An anonymous map is page-aligned, so the cast cannot fail.
        bytemuck::cast_slice(&self.map[..self.len * 4])
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(&mut self.map[..self.len * 4])
    }
}

impl Index<Range<usize>> for Arena {
    type Output = [f32];
    fn index(&self, r: Range<usize>) -> &[f32] {
        &self.as_slice()[r]
    }
}

impl IndexMut<Range<usize>> for Arena {
    fn index_mut(&mut self, r: Range<usize>) -> &mut [f32] {
        &mut self.as_mut_slice()[r]
    }
}
