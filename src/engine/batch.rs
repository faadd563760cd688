//! Whole jobs on the engine: a batch of requests run to completion ([`generate_batch`],
//! [`Engine::run_batch`]) and one streamed sequence ([`generate`]). Their pools are sized to the job, so a
//! small one does not allocate the whole `kv_bytes` budget.
use super::blocks::blocks_for;
use super::driver::budget_blocks;
use super::{Engine, EngineConfig, Event, Generation, Request, SeqId};
use crate::model::Model;
use crate::sample::SamplingParams;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;

/// Runs requests to completion as one continuous batch; `result[i][j]` is request i's j-th sample. Requests
/// with equal prompt, max_new_tokens and stop_ids are merged first so all their sequences share one prompt
/// prefill.
pub fn generate_batch(model: &dyn Model, reqs: Vec<Request>, cfg: &EngineConfig) -> Result<Vec<Vec<Generation>>> {
    Engine::new(model, sized(model, cfg, &reqs))?.run_batch(&reqs)
}

/// One sequence; `on_token` sees each id as it is generated, and an error from it aborts and is returned.
pub fn generate(
    model: &dyn Model,
    prompt: &[u32],
    max_new_tokens: usize,
    params: SamplingParams,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    let req = Request { prompt: prompt.to_vec(), max_new_tokens, stop_ids: stop_ids.to_vec(), samples: vec![params] };
    let mut engine = Engine::new(model, sized(model, &EngineConfig::default(), std::slice::from_ref(&req)))?;
    let seq = *engine.add(req)?.first().context("the engine made no sequence")?;
    while !engine.is_idle() {
        for event in engine.step()? {
            match event {
                Event::Token { id, .. } => {
                    if let Err(e) = on_token(id) {
                        engine.abort(seq);
                        return Err(e);
                    }
                }
                Event::Finished { generation, .. } => return Ok(generation),
            }
        }
    }
    bail!("the engine went idle without finishing the sequence")
}

/// `cfg` with, unless it names a pool size, a pool of what `reqs` can use at most (every sample's prompt and
/// budget in blocks of its own) when that is less than the `kv_bytes` budget.
fn sized(model: &dyn Model, cfg: &EngineConfig, reqs: &[Request]) -> EngineConfig {
    let ctx = model.config().max_position_embeddings;
    let bs = cfg.block_size.max(1);
    let need = reqs.iter().fold(0usize, |acc, r| {
        let tokens = r.prompt.len().saturating_add(r.max_new_tokens.min(ctx.saturating_sub(r.prompt.len())));
        acc.saturating_add(r.samples.len().saturating_mul(blocks_for(tokens, bs)))
    });
    let budget = budget_blocks(model, cfg);
    // A budget of no blocks stays None, for Engine::new to explain.
    EngineConfig { num_blocks: cfg.num_blocks.or((budget > 0).then(|| need.clamp(1, budget))), ..*cfg }
}

impl Engine<'_> {
    /// Runs `reqs` to completion, and whatever else the engine holds (whose events are dropped);
    /// `result[i][j]` is request i's j-th sample. Requests with equal prompt, max_new_tokens and stop_ids are
    /// merged first (in groups of at most max_seqs samples) so their sequences share one prompt prefill. On an
    /// error, the sequences of `reqs` are aborted.
    pub fn run_batch(&mut self, reqs: &[Request]) -> Result<Vec<Vec<Generation>>> {
        let mut results: Vec<Vec<Option<Generation>>> = reqs.iter().map(|r| vec![None; r.samples.len()]).collect();
        let mut owner: HashMap<SeqId, (usize, usize)> = HashMap::new();
        let outcome = self.add_merged(reqs, &mut owner).and_then(|()| {
            while !self.is_idle() {
                for event in self.step()? {
                    if let Event::Finished { seq, generation } = event {
                        if let Some(&(i, j)) = owner.get(&seq) {
                            results[i][j] = Some(generation);
                        }
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = outcome {
            for &seq in owner.keys() {
                self.abort(seq);
            }
            return Err(e);
        }
        results
            .into_iter()
            .map(|r| r.into_iter().collect::<Option<Vec<_>>>())
            .collect::<Option<_>>()
            .context("a sequence never finished")
    }

    /// Adds `reqs` merged into groups of equal (prompt, max_new_tokens, stop_ids), recording which request's
    /// sample each sequence is.
    fn add_merged(&mut self, reqs: &[Request], owner: &mut HashMap<SeqId, (usize, usize)>) -> Result<()> {
        let max = self.max_seqs();
        let mut groups: Vec<(Request, Vec<(usize, usize)>)> = Vec::new();
        let mut open: HashMap<(&[u32], usize, &[u32]), usize> = HashMap::new();
        for (i, r) in reqs.iter().enumerate() {
            if r.samples.is_empty() {
                bail!("request {i} asks for no samples");
            }
            let key = (&r.prompt[..], r.max_new_tokens, &r.stop_ids[..]);
            for (j, &params) in r.samples.iter().enumerate() {
                let g = match open.get(&key) {
                    Some(&g) if groups[g].1.len() < max => g,
                    _ => {
                        groups.push((Request { samples: Vec::new(), ..r.clone() }, Vec::new()));
                        open.insert(key, groups.len() - 1);
                        groups.len() - 1
                    }
                };
                groups[g].0.samples.push(params);
                groups[g].1.push((i, j));
            }
        }
        for (req, owners) in groups {
            let ids = self.add(req).with_context(|| format!("request {}", owners[0].0))?;
            owner.extend(ids.into_iter().zip(owners));
        }
        Ok(())
    }
}
