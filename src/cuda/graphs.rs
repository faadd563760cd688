//! Decode steps replayed as CUDA graphs. At 135M-500M parameters a decode step's weights stream in tens of
//! microseconds, while each of its ~10 launches per layer costs the host a few: launch gaps, not the GPU,
//! set batch-1 speed. So a step whose every sequence brings one token is padded to a fixed bucket of rows,
//! and its forward (embedding, layers, final norm, LM head; not the sampling, which runs after it) is
//! captured once as a graph and then replayed with one launch.
//!
//! What makes a step's launches the same at every replay:
//! - its rows are padded to a bucket ([`bucket`]). Padding rows embed token 0 at position 0, append nothing to
//!   the KV pool (slot -1: `kernels/qkv.cu`) and attend to key 0 of the first row's sequence; every row goes
//!   into the LM head once, the sampled ones first, whose logits are the only ones read ([`head_rows`]);
//! - attention runs on a [`FixedGrid`]: the bucket's rows, and a power of two of splits of the pinned split
//!   length, enough for the longest row ([`grid`]);
//! - the step uploads its metadata (token ids, positions, slots, picked rows; attention's tiles and block
//!   tables) into the same device buffers before the replay, on the same stream.
//!
//! A graph holds the address of every buffer it touches, so [`Graphs`] keeps those addresses with it and
//! replays it only while they are all the same; after a buffer has grown the step is captured again.
//! Captures go to the model's own stream (`Gpu::twin`), so a launch from another thread onto the shared
//! stream is never caught in one; replays go to the shared stream, in order with the rest of the step.
//! A graph is captured the second time its key comes: the first time the step runs eagerly, which loads every
//! kernel it uses (cuBLASLt's included) outside a capture.
//!
//! Results are the eager path's bit for bit: padding changes no real row (every kernel's rows are
//! independent, the products exclude split-K, and an empty split adds nothing to a row's sums; see
//! `cuda::attention`), and `tests/cuda_model.rs` checks it on the device.
use super::attention::FixedGrid;
use super::Gpu;
use anyhow::{Context, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};
use std::collections::HashMap;
use std::sync::Arc;

/// The largest bucket: a decode step of more rows runs eagerly.
pub const MAX_ROWS: usize = 256;

/// The rows a decode step of `rows` rows is padded to: 1, 2, 4, 8, then each power of two and three
/// quarters of it (12, 16, 24, 32, 48, ...) up to [`MAX_ROWS`]: 14 buckets, and a bucket holds less than 1.5
/// times its rows beyond 8. None for no rows or more than [`MAX_ROWS`].
pub fn bucket(rows: usize) -> Option<usize> {
    match rows {
        0 => None,
        1..=8 => Some(rows.next_power_of_two()),
        _ if rows <= MAX_ROWS => {
            let p = rows.next_power_of_two();
            Some(if rows <= p / 4 * 3 { p / 4 * 3 } else { p })
        }
        _ => None,
    }
}

/// The grid of a decode step whose rows are `(sequence, position)`: its bucket, and enough splits of
/// `split_keys` keys for its longest row, rounded up to a power of two (a growing context is captured again
/// only at each doubling). None when the step has no bucket.
pub fn grid(rows: &[(usize, usize)], split_keys: usize) -> Option<FixedGrid> {
    let longest = rows.iter().map(|&(_, pos)| pos + 1).max()?;
    let splits = longest.div_ceil(split_keys.max(1)).next_power_of_two();
    Some(FixedGrid { rows: bucket(rows.len())?, splits })
}

/// The rows into the LM head of a step padded to `rows` rows, from its sampled rows `picked` (distinct, in
/// sampling order): those first, so that their logits lead in order, then every other row once. Every row
/// goes in exactly once because the final norm adds the last layer's output to its rows in place: a row
/// picked twice would be added to twice. The rows not sampled are computed and never read.
pub fn head_rows(picked: &mut Vec<i32>, rows: usize) {
    let mut taken = vec![false; rows];
    for &r in picked.iter() {
        taken[r as usize] = true;
    }
    picked.extend((0..rows).filter(|&r| !taken[r]).map(|r| r as i32));
}

/// What a graph is captured for: the grid, and the KV pool's geometry (a layer's keys start at an offset
/// that depends on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub grid: FixedGrid,
    pub pool_blocks: usize,
    pub block_size: usize,
}

/// How a model's decode steps have run: eagerly (a key's first step, or graphs off), captured, or replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    pub eager: u64,
    pub captured: u64,
    pub replayed: u64,
}

struct Entry {
    /// The buffers' addresses when the key was last seen.
    addresses: Vec<u64>,
    /// None until the key's second step.
    graph: Option<Captured>,
}

/// A captured graph. CUDA's graph handles may be used from any thread; cudarc's wrapper does not say so
/// because they must not be used from two at once, and a model's graphs are only used behind its step lock.
struct Captured(CudaGraph);
unsafe impl Send for Captured {}

/// A model's graphs and the stream they are captured on.
pub struct Graphs {
    enabled: bool,
    graphs: HashMap<Key, Entry>,
    /// The capture stream, made at the first capture, with the shared stream the graphs replay on.
    twin: Option<(Gpu, Arc<CudaStream>)>,
    stats: GraphStats,
}

impl Default for Graphs {
    fn default() -> Graphs {
        Graphs { enabled: true, graphs: HashMap::new(), twin: None, stats: GraphStats::default() }
    }
}

impl Drop for Graphs {
    fn drop(&mut self) {
        // A replay may still be running on the shared stream with the twin's cuBLASLt workspace, which
        // dropping the twin frees on its own stream.
        if let Some((_, shared)) = &self.twin {
            let _ = shared.synchronize();
        }
    }
}

impl Graphs {
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Turns graphs on or off for the steps that follow (off: every step runs eagerly).
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    pub fn stats(&self) -> GraphStats {
        self.stats
    }

    /// Runs a decode step's forward, `body`, which launches on the stream of the `Gpu` it is given: eagerly
    /// on `gpu` the first time `key` comes with these buffer `addresses`, else as its graph (captured now if
    /// it was not yet), launched on `gpu`'s stream. A capture that fails turns graphs off for this model,
    /// with a warning, and the step runs eagerly: graphs are a speed-up, never a reason for a step to fail.
    pub fn run(
        &mut self,
        gpu: &Gpu,
        key: Key,
        addresses: Vec<u64>,
        body: &mut dyn FnMut(&Gpu) -> Result<()>,
    ) -> Result<()> {
        if self.graphs.get(&key).is_none_or(|e| e.addresses != addresses) {
            body(gpu)?;
            self.graphs.insert(key, Entry { addresses, graph: None });
            self.stats.eager += 1;
            return Ok(());
        }
        if self.graphs[&key].graph.is_none() {
            match self.capture(gpu, body) {
                Ok(graph) => self.graphs.get_mut(&key).expect("seen above").graph = Some(Captured(graph)),
                Err(e) => {
                    // Nothing ran in the capture: the step runs eagerly, and so does every later one.
                    eprintln!(
                        "warning: capturing a decode step ({key:?}) as a CUDA graph failed ({e:#}); running eagerly"
                    );
                    self.enabled = false;
                    body(gpu)?;
                    self.stats.eager += 1;
                    return Ok(());
                }
            }
            self.stats.captured += 1;
        }
        let Captured(graph) = self.graphs[&key].graph.as_ref().expect("captured above");
        unsafe { cudarc::driver::result::graph::launch(graph.cu_graph_exec(), gpu.stream.cu_stream()) }
            .context("launching a decode step's CUDA graph")?;
        self.stats.replayed += 1;
        Ok(())
    }

    /// `body`'s launches on the twin stream (made at the first capture), captured (not run) and
    /// instantiated. Thread-local capture mode: only this thread is barred from calls that would break the
    /// capture, and `body` makes none (no allocation, copy or synchronisation: `cuda::model` sizes every
    /// buffer first).
    fn capture(&mut self, gpu: &Gpu, body: &mut dyn FnMut(&Gpu) -> Result<()>) -> Result<CudaGraph> {
        if self.twin.is_none() {
            self.twin = Some((gpu.twin()?, gpu.stream.clone()));
        }
        let (twin, _) = self.twin.as_ref().expect("made above");
        twin.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let launched = body(twin);
        // Ended whatever happened, so the stream leaves capture mode.
        let graph = twin.stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        graph?.context("the capture recorded no work")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_batch_with_less_than_half_of_padding() {
        assert_eq!(bucket(0), None);
        let small: Vec<_> = (1..=8).map(|r| bucket(r).unwrap()).collect();
        assert_eq!(small, [1, 2, 4, 4, 8, 8, 8, 8]);
        assert_eq!(
            [9, 12, 13, 16, 17, 24, 25, 33, 49, 65].map(|r| bucket(r).unwrap()),
            [12, 12, 16, 16, 24, 24, 32, 48, 64, 96]
        );
        assert_eq!(bucket(MAX_ROWS), Some(MAX_ROWS));
        assert_eq!(bucket(MAX_ROWS + 1), None);
        let mut sizes = std::collections::BTreeSet::new();
        for r in 1..=MAX_ROWS {
            let b = bucket(r).unwrap();
            assert!(b >= r && (r <= 8 || 2 * b < 3 * r), "{r} rows -> {b}");
            assert_eq!(bucket(b), Some(b), "a bucket is its own bucket");
            sizes.insert(b);
        }
        assert_eq!(sizes.len(), 14, "{sizes:?}");
    }

    #[test]
    fn the_head_takes_every_row_once_the_sampled_first() {
        let mut picked = vec![3, 0];
        head_rows(&mut picked, 6);
        assert_eq!(picked, [3, 0, 1, 2, 4, 5]);
        let mut none = Vec::new();
        head_rows(&mut none, 2);
        assert_eq!(none, [0, 1]);
        let mut all = vec![1, 0];
        head_rows(&mut all, 2);
        assert_eq!(all, [1, 0]);
    }

    #[test]
    fn grids_give_the_longest_row_a_power_of_two_of_splits() {
        let g = |rows: &[(usize, usize)]| grid(rows, 64).map(|g| (g.rows, g.splits));
        assert_eq!(g(&[]), None);
        assert_eq!(g(&[(0, 0)]), Some((1, 1)));
        assert_eq!(g(&[(0, 63)]), Some((1, 1)));
        assert_eq!(g(&[(0, 64)]), Some((1, 2)));
        assert_eq!(g(&[(0, 5), (1, 191), (2, 9)]), Some((4, 4)));
        assert_eq!(g(&[(0, 4096)]), Some((1, 128)));
        let many: Vec<_> = (0..MAX_ROWS + 1).map(|s| (s, 3)).collect();
        assert_eq!(g(&many), None);
    }
}
