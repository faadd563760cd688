//! An engine on its own thread, fed from any number of threads or async tasks: what `mappa serve` runs.
//! Each submitted request joins the one continuous batch at the next step and gets its own channel of
//! updates; a caller that drops its receiver (a client that went away, a stop string reached) has its
//! sequence aborted at the next token, so no generation runs on for nobody.
//!
//! Scoring a text ([`EngineService::score`]: the log-prob of each token given those before, with
//! alternatives, for `echo`) runs on the same thread between two steps, through the model's forward-only
//! [`Model::sequence_top_logprobs`](crate::model::Model::sequence_top_logprobs); the batch waits for it.
//!
//! The update channels are tokio's unbounded ones: the engine thread sends without blocking or awaiting,
//! and an async handler awaits them, so dropping the handler's future (hyper does when its client
//! disconnects) drops the receiver and cancels the generation.
use super::constraint::Constraints;
use super::{Engine, EngineConfig, Event, Generation, Request, SeqId};
use crate::model::{Model, Packed};
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

/// What a submitted sequence hears.
#[derive(Debug)]
pub enum Update {
    Token {
        id: u32,
        logprob: f32,
        /// The alternatives the sample asked for (empty: none).
        top: Vec<(u32, f32)>,
    },
    Done(Generation),
    /// The request was refused, or the step it was in failed.
    Failed(String),
}

/// The engine's state after its last step, for monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceLoad {
    /// Sequences decoding or prefilling, and waiting for admission.
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks: usize,
    /// Tokens sampled since the start, and prompt tokens computed (prefix-cache hits excluded).
    pub generated_tokens: u64,
    pub prefill_tokens: u64,
}

enum Submission {
    Generate {
        req: Request,
        /// One per sample, or none.
        constraints: Constraints,
        /// One per sample of the request.
        replies: Vec<UnboundedSender<Update>>,
    },
    Score {
        tokens: Vec<u32>,
        temperature: f32,
        top: usize,
        reply: oneshot::Sender<Result<Scores, String>>,
    },
}

/// A scored text of n tokens: for i in 0..n-1, the log-prob of token i + 1 given tokens 0..=i and the
/// alternatives asked for at that position (empty lists when none were).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    pub logprobs: Vec<f32>,
    pub top: Vec<Vec<(u32, f32)>>,
}

/// A cheap, cloneable handle to an engine thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct EngineService {
    tx: Sender<Submission>,
    load: Arc<Mutex<ServiceLoad>>,
}

impl EngineService {
    /// Starts the engine thread, which owns `model`; a configuration the engine refuses is an error here,
    /// not on the first request.
    pub fn spawn(model: Box<dyn Model>, cfg: EngineConfig) -> Result<(EngineService, JoinHandle<()>)> {
        let (tx, rx) = channel();
        let (ready_tx, ready_rx) = channel();
        let load = Arc::new(Mutex::new(ServiceLoad::default()));
        let published = load.clone();
        let thread = std::thread::Builder::new().name("engine".into()).spawn(move || {
            match Engine::new(model.as_ref(), cfg) {
                Ok(engine) => {
                    drop(ready_tx.send(Ok(())));
                    run(engine, rx, &published);
                }
                Err(e) => drop(ready_tx.send(Err(e))),
            }
        })?;
        ready_rx.recv().map_err(|_| anyhow!("the engine thread stopped while starting"))??;
        Ok((EngineService { tx, load }, thread))
    }

    /// Adds `req` to the batch; one receiver per sample, in order.
    pub fn submit(&self, req: Request) -> Result<Vec<UnboundedReceiver<Update>>> {
        self.submit_constrained(req, Vec::new())
    }

    /// [`EngineService::submit`] with a constraint per sample (or none: an empty list), as
    /// [`Engine::add_constrained`] takes them; a constraint that cannot start fails its request's receivers.
    pub fn submit_constrained(&self, req: Request, constraints: Constraints) -> Result<Vec<UnboundedReceiver<Update>>> {
        let (replies, receivers): (Vec<_>, Vec<_>) = req.samples.iter().map(|_| unbounded_channel()).unzip();
        let s = Submission::Generate { req, constraints, replies };
        self.tx.send(s).map_err(|_| anyhow!("the engine thread has stopped"))?;
        Ok(receivers)
    }

    /// Scores `tokens` under softmax(logits / temperature) with `top` alternatives per position (see
    /// [`Scores`]); the answer comes on the receiver (an error as its message). Skipped if the receiver is
    /// dropped before the engine thread gets to it.
    pub fn score(
        &self,
        tokens: Vec<u32>,
        temperature: f32,
        top: usize,
    ) -> Result<oneshot::Receiver<Result<Scores, String>>> {
        let (reply, rx) = oneshot::channel();
        let s = Submission::Score { tokens, temperature, top, reply };
        self.tx.send(s).map_err(|_| anyhow!("the engine thread has stopped"))?;
        Ok(rx)
    }

    /// The engine's state after its last step.
    pub fn load(&self) -> ServiceLoad {
        *self.load.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn run(mut engine: Engine, rx: Receiver<Submission>, load: &Mutex<ServiceLoad>) {
    let mut senders: HashMap<SeqId, UnboundedSender<Update>> = HashMap::new();
    let mut generated = 0u64;
    loop {
        let (running, waiting) = engine.counts();
        *load.lock().unwrap_or_else(|e| e.into_inner()) = ServiceLoad {
            running,
            waiting,
            kv_blocks_used: engine.used_blocks(),
            kv_blocks: engine.num_blocks(),
            generated_tokens: generated,
            prefill_tokens: engine.stats().prefill_tokens,
        };
        // Wait while idle; otherwise take whatever arrived and go on stepping.
        let first = if engine.is_idle() {
            match rx.recv() {
                Ok(s) => Some(s),
                Err(_) => return,
            }
        } else {
            None
        };
        for s in first.into_iter().chain(rx.try_iter()) {
            match s {
                Submission::Generate { req, constraints, replies } => match engine.add_constrained(req, constraints) {
                    Ok(ids) => senders.extend(ids.into_iter().zip(replies)),
                    Err(e) => replies.iter().for_each(|r| drop(r.send(Update::Failed(format!("{e:#}"))))),
                },
                Submission::Score { reply, .. } if reply.is_closed() => {}
                Submission::Score { tokens, temperature, top, reply } => {
                    let scored = score(engine.model(), &tokens, temperature, top).map_err(|e| format!("{e:#}"));
                    drop(reply.send(scored));
                }
            }
        }
        if engine.is_idle() {
            continue;
        }
        match engine.step() {
            Ok(events) => {
                for ev in events {
                    let (seq, update) = match ev {
                        Event::Token { seq, id, logprob, top } => {
                            generated += 1;
                            (seq, Update::Token { id, logprob, top })
                        }
                        Event::Finished { seq, generation } => (seq, Update::Done(generation)),
                        Event::Failed { seq, error } => (seq, Update::Failed(error)),
                    };
                    let done = matches!(update, Update::Done(_) | Update::Failed(_));
                    let gone = senders.get(&seq).is_none_or(|tx| tx.send(update).is_err());
                    if done {
                        senders.remove(&seq);
                    } else if gone {
                        engine.abort(seq);
                        senders.remove(&seq);
                    }
                }
            }
            Err(e) => {
                // A failed step leaves no sequence in a known state: fail them all and start afresh.
                let msg = format!("{e:#}");
                for (seq, tx) in senders.drain() {
                    engine.abort(seq);
                    drop(tx.send(Update::Failed(msg.clone())));
                }
            }
        }
    }
}

/// `tokens` scored by `model` (see [`Scores`]): one forward pass over the whole text.
fn score(model: &dyn Model, tokens: &[u32], temperature: f32, top: usize) -> Result<Scores> {
    crate::model::check_tokens(model.config(), tokens)?;
    crate::model::check_end(model.config(), tokens.len())?;
    if tokens.len() < 2 {
        return Ok(Scores::default());
    }
    let positions: Vec<usize> = (0..tokens.len() - 1).collect();
    let packed = Packed { tokens, seq_lens: &[tokens.len()], positions: &positions };
    let (logprobs, top) = model.sequence_top_logprobs(packed, temperature, top)?;
    anyhow::ensure!(
        logprobs.len() == positions.len() && top.len() == positions.len(),
        "the model scored {} positions of {}",
        logprobs.len(),
        positions.len()
    );
    Ok(Scores { logprobs, top })
}
