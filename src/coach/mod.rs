//! The coach: an LLM (or a rule) that scores each agent action 0-10; the scores are MAPPA's per-action
//! rewards (paper notes, section 4).
//!
//! Flow per action ([`Coach::score_action`]): render the prompt, call the backend, parse the reply
//! strictly ([`parse_score`]). An unparsable reply gets exactly one retry that shows the reply and the
//! error and restates the format; if that fails too, or the backend fails after its own transport
//! retries, the action is [`CoachOutcome::Unscored`]: the caller leaves it out of training and counts
//! it. There is no fallback score (section 8, item 5). Every exchange goes to the [`CoachLog`].
//!
//! Coach calls need not block rollouts (section 8, item 9): [`Coach::score_all`] scores many actions on
//! worker threads, and [`Coach::spawn_score_all`] does so in the background.
//!
//! Backends implement [`CoachBackend`]: [`HttpCoach`] (OpenAI-compatible API), [`RuleCoach`] (graded
//! answers), [`LocalCoach`] (a model run by the engine).
mod http;
mod local;
mod log;
mod parse;
mod prompt;
mod rule;

pub use http::{HttpCoach, HttpCoachConfig};
pub use local::LocalCoach;
pub use log::{CoachLog, LogRecord};
pub use parse::{parse_score, ParseError, MAX_SCORE, SCORE_KEY};
pub use prompt::{
    retry_messages, truncate_middle, CoachPrompt, DEFAULT_TOOL_OUTPUT_LIMIT, MATHCHAT_TEMPLATE, NO_TOOL_OUTPUT,
};
pub use rule::{OtherAgents, RuleCoach};

use crate::tokenizer::ChatMessage;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

/// One action to score: what the agent is, what it saw, and what it did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoachRequest {
    pub agent_name: String,
    /// The agent's role description.
    pub agent_role: String,
    /// The problem the team works on.
    pub task: String,
    /// The full context the agent saw, as text.
    pub agent_input: String,
    pub agent_output: String,
    /// The output of the tool run by this action, if any.
    pub tool_output: Option<String>,
    /// Names of the files present.
    pub files: Vec<String>,
    /// The reference answer; the caller sets it only for the final agent and only when configured.
    pub ground_truth: Option<String>,
}

/// The result of scoring one action.
#[derive(Clone, Debug, PartialEq)]
pub enum CoachOutcome {
    /// A score in [0, 10]; `attempts` is 1, or 2 after the format retry.
    Scored { score: f32, attempts: u32 },
    /// No usable score: the action is left out of training and counted.
    Unscored { reason: String },
}

/// Something that answers a coach prompt.
pub trait CoachBackend: Send + Sync {
    /// The reply to `messages`. Transport retries happen inside; an error here is final.
    fn complete(&self, messages: &[ChatMessage]) -> Result<String>;

    /// The reply for one scoring exchange of `req`, whose prompt is `messages`. Model backends need
    /// only the messages (this default); rule backends read the request instead.
    fn reply(&self, req: &CoachRequest, messages: &[ChatMessage]) -> Result<String> {
        let _ = req;
        self.complete(messages)
    }
}

/// Calls per action: the first, plus one format retry.
const MAX_ATTEMPTS: u32 = 2;

/// A backend, a prompt and an optional log: everything needed to score actions.
pub struct Coach {
    backend: Box<dyn CoachBackend>,
    prompt: CoachPrompt,
    log: Option<CoachLog>,
}

impl Coach {
    pub fn new(backend: impl CoachBackend + 'static, prompt: CoachPrompt, log: Option<CoachLog>) -> Coach {
        Coach { backend: Box::new(backend), prompt, log }
    }

    pub fn log(&self) -> Option<&CoachLog> {
        self.log.as_ref()
    }

    /// Scores one action (see the module docs for the flow).
    pub fn score_action(&self, req: &CoachRequest) -> CoachOutcome {
        let mut messages = match self.prompt.render(req) {
            Ok(m) => m,
            Err(e) => return CoachOutcome::Unscored { reason: format!("coach prompt failed to render: {e:#}") },
        };
        let mut errors = Vec::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let (reply, parsed) = match self.exchange(req, &messages, attempt) {
                Ok(exchanged) => exchanged,
                Err(reason) => return CoachOutcome::Unscored { reason },
            };
            match parsed {
                Ok(score) => return CoachOutcome::Scored { score, attempts: attempt },
                Err(e) => {
                    if attempt < MAX_ATTEMPTS {
                        messages = retry_messages(&messages, &reply, &e);
                    }
                    errors.push(format!("attempt {attempt}: {e}"));
                }
            }
        }
        CoachOutcome::Unscored { reason: format!("no valid {SCORE_KEY} in the reply ({})", errors.join("; ")) }
    }

    /// One backend call, parsed and logged: the reply and its score, or why the action cannot be scored.
    fn exchange(
        &self,
        req: &CoachRequest,
        messages: &[ChatMessage],
        attempt: u32,
    ) -> Result<(String, Result<f32, ParseError>), String> {
        let start = Instant::now();
        let result = self.backend.reply(req, messages).map(|reply| {
            let parsed = parse_score(&reply);
            (reply, parsed)
        });
        let latency_ms = start.elapsed().as_secs_f64() * 1e3;
        if let Some(log) = &self.log {
            let (status, score, error, reply) = match &result {
                Ok((reply, Ok(score))) => ("scored", Some(*score), None, Some(reply.as_str())),
                Ok((reply, Err(e))) => ("parse_error", None, Some(e.to_string()), Some(reply.as_str())),
                Err(e) => ("backend_error", None, Some(format!("{e:#}")), None),
            };
            log.record(&LogRecord {
                agent: &req.agent_name,
                attempt,
                status,
                latency_ms,
                score,
                error,
                messages,
                reply,
            });
        }
        result.map_err(|e| format!("coach backend failed on attempt {attempt}: {e:#}"))
    }

    /// Scores `reqs` on up to `concurrency` threads (at least 1); outcomes come back in request order.
    /// Plain scoped threads, not rayon: the calls block on I/O and must not occupy the compute pool.
    pub fn score_all(&self, reqs: Vec<CoachRequest>, concurrency: usize) -> Vec<CoachOutcome> {
        let next = AtomicUsize::new(0);
        let worker = || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = reqs.get(i) else { return done };
                done.push((i, self.score_action(req)));
            }
        };
        let workers = concurrency.clamp(1, reqs.len().max(1));
        let mut done: Vec<(usize, CoachOutcome)> = thread::scope(|s| {
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(worker)).collect();
            // A worker only panics on a bug in a backend; pass the panic on rather than lose outcomes.
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        done.sort_unstable_by_key(|&(i, _)| i);
        done.into_iter().map(|(_, outcome)| outcome).collect()
    }

    /// [`Coach::score_all`] on a background thread, so rollouts can go on while the coach works.
    pub fn spawn_score_all(
        self: &Arc<Self>,
        reqs: Vec<CoachRequest>,
        concurrency: usize,
    ) -> Result<JoinHandle<Vec<CoachOutcome>>> {
        let coach = Arc::clone(self);
        Ok(thread::Builder::new().name("coach".into()).spawn(move || coach.score_all(reqs, concurrency))?)
    }
}

/// Locks a mutex, ignoring poisoning: the guarded data (a file, a counter) stays valid after a panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
