//! Whole jobs on the engine: a batch of requests run to completion ([`generate_batch`],
//! [`Engine::run_batch`]) and one streamed sequence ([`generate`]). Their pools are sized to the job, so a
//! small one does not allocate the whole `kv_bytes` budget.
use super::blocks::blocks_for;
use super::constraint::Constraints;
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

/// [`generate_batch`] with constraints: `constraints[i]` holds request i's, one per sample or none (an
/// empty list); a missing entry constrains nothing. A sequence whose constraint fails fails the batch.
/// E.g. a local coach whose reply must end in a score line: `crate::constrain::Grammars::regex`.
pub fn generate_batch_constrained(
    model: &dyn Model,
    reqs: Vec<Request>,
    constraints: Vec<Constraints>,
    cfg: &EngineConfig,
) -> Result<Vec<Vec<Generation>>> {
    Engine::new(model, sized(model, cfg, &reqs))?.run_batch_constrained(&reqs, constraints)
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
                Event::Failed { error, .. } => bail!("{error}"),
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
        self.run_batch_constrained(reqs, Vec::new())
    }

    /// [`Engine::run_batch`] with constraints, as [`generate_batch_constrained`] takes them.
    pub fn run_batch_constrained(
        &mut self,
        reqs: &[Request],
        constraints: Vec<Constraints>,
    ) -> Result<Vec<Vec<Generation>>> {
        let mut results: Vec<Vec<Option<Generation>>> = reqs.iter().map(|r| vec![None; r.samples.len()]).collect();
        let mut owner: HashMap<SeqId, (usize, usize)> = HashMap::new();
        let outcome = self.add_merged(reqs, constraints, &mut owner).and_then(|()| {
            while !self.is_idle() {
                for event in self.step()? {
                    match event {
                        Event::Finished { seq, generation } => {
                            if let Some(&(i, j)) = owner.get(&seq) {
                                results[i][j] = Some(generation);
                            }
                        }
                        Event::Failed { seq, error } => {
                            if let Some(&(i, j)) = owner.get(&seq) {
                                bail!("request {i}, sample {j}: {error}");
                            }
                        }
                        Event::Token { .. } => {}
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
    /// sample each sequence is; each sample keeps its own constraint.
    fn add_merged(
        &mut self,
        reqs: &[Request],
        constraints: Vec<Constraints>,
        owner: &mut HashMap<SeqId, (usize, usize)>,
    ) -> Result<()> {
        let max = self.max_seqs();
        let mut constraints = constraints.into_iter();
        let mut groups: Vec<(Request, Constraints, Vec<(usize, usize)>)> = Vec::new();
        let mut open: HashMap<(&[u32], usize, &[u32]), usize> = HashMap::new();
        for (i, r) in reqs.iter().enumerate() {
            if r.samples.is_empty() {
                bail!("request {i} asks for no samples");
            }
            let key = (&r.prompt[..], r.max_new_tokens, &r.stop_ids[..]);
            let mut own = constraints.next().unwrap_or_default().into_iter();
            if own.len() != 0 && own.len() != r.samples.len() {
                bail!("request {i} has {} constraints for {} samples", own.len(), r.samples.len());
            }
            for (j, &params) in r.samples.iter().enumerate() {
                let g = match open.get(&key) {
                    Some(&g) if groups[g].2.len() < max => g,
                    _ => {
                        groups.push((Request { samples: Vec::new(), ..r.clone() }, Vec::new(), Vec::new()));
                        open.insert(key, groups.len() - 1);
                        groups.len() - 1
                    }
                };
                groups[g].0.samples.push(params);
                groups[g].1.push(own.next().flatten());
                groups[g].2.push((i, j));
            }
        }
        for (req, constraints, owners) in groups {
            // A group of unconstrained samples adds none, as `Engine::add` does.
            let constraints = if constraints.iter().all(Option::is_none) { Vec::new() } else { constraints };
            let ids = self.add_constrained(req, constraints).with_context(|| format!("request {}", owners[0].0))?;
            owner.extend(ids.into_iter().zip(owners));
        }
        Ok(())
    }
}
