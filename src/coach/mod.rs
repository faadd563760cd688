//! The coach: an LLM (or a rule) that scores each agent action 0-10; the scores are MAPPA's per-action
//! rewards (paper notes, section 4).
//!
//! Flow per action ([`Coach::score_action`]): render the prompt, call the backend, parse the reply
//! strictly ([`parse_score`]). An unparsable reply gets exactly one retry that shows the reply and the
//! error and restates the format; if that fails too, or the backend fails after its own transport
//! retries, the action is [`CoachOutcome::Unscored`]: the caller leaves it out of training and counts
//! it. There is no fallback score (section 8, item 5). Every exchange goes to the [`CoachLog`].
//!
//! Coach calls need not block rollouts (section 8, item 9): [`Coach::score_during`] scores each action as soon
//! as the rollout produces it, while the rollout goes on; [`Coach::score_all`] scores many actions at once
//! (worker threads, or one batch for a local model).
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
pub use local::{expected_score, LocalCoach, LocalScoring};
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
use std::sync::{mpsc, Mutex, MutexGuard, PoisonError};
use std::thread;
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
    /// The reference answer; the caller sets it only for the final agent and only when configured. For a
    /// DSBench task it is the grade of the final agent's submission (its metric, or why it is invalid).
    pub ground_truth: Option<String>,
    /// The files the agent must leave (its `artifacts`).
    pub artifacts: Vec<String>,
    /// The action was cut off at the token budget.
    #[serde(default)]
    pub truncated: bool,
    /// For the final agent of a DSBench task: its submission graded after the action (the rule coach reads it).
    pub submission: Option<crate::dsbench::Grade>,
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
    /// Checks, once before a run writes anything, that the backend can answer at all (a server is there and
    /// takes the key); backends that are ready once built need not override it.
    fn probe(&self) -> Result<()> {
        Ok(())
    }

    /// The reply to `messages`. Transport retries happen inside; an error here is final.
    fn complete(&self, messages: &[ChatMessage]) -> Result<String>;

    /// The reply for one scoring exchange of `req`, whose prompt is `messages`. Model backends need
    /// only the messages (this default); rule backends read the request instead.
    fn reply(&self, req: &CoachRequest, messages: &[ChatMessage]) -> Result<String> {
        let _ = req;
        self.complete(messages)
    }

    /// Whether scoring may run while the rollout does ([`Coach::score_during`]): true for backends that wait on
    /// something else (a server, a rule); a local model shares the rollout's compute and answers in one batch
    /// afterwards instead.
    fn overlaps_rollout(&self) -> bool {
        true
    }

    /// Replies to many exchanges, in order, each with its latency in milliseconds. The default runs `reply`
    /// on up to `concurrency` plain threads (not rayon: the calls block on I/O and must not occupy the
    /// compute pool); a local model answers them as one batch instead.
    fn reply_all(
        &self,
        exchanges: &[(&CoachRequest, &[ChatMessage])],
        concurrency: usize,
    ) -> Vec<(Result<String>, f64)> {
        let next = AtomicUsize::new(0);
        let worker = || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((req, messages)) = exchanges.get(i) else { return done };
                let start = Instant::now();
                let reply = self.reply(req, messages);
                done.push((i, (reply, start.elapsed().as_secs_f64() * 1e3)));
            }
        };
        let workers = concurrency.clamp(1, exchanges.len().max(1));
        let mut done: Vec<(usize, (Result<String>, f64))> = thread::scope(|s| {
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(worker)).collect();
            // A worker only panics on a bug in a backend; pass the panic on rather than lose replies.
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, reply)| reply).collect()
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

/// An action being scored: its prompt so far and the format errors of its earlier attempts.
struct Pending {
    messages: Vec<ChatMessage>,
    errors: Vec<String>,
}

impl Coach {
    pub fn new(backend: impl CoachBackend + 'static, prompt: CoachPrompt, log: Option<CoachLog>) -> Coach {
        Coach { backend: Box::new(backend), prompt, log }
    }

    /// The same coach, logging every exchange to `log`.
    pub fn with_log(self, log: CoachLog) -> Coach {
        Coach { log: Some(log), ..self }
    }

    /// [`CoachBackend::probe`].
    pub fn probe(&self) -> Result<()> {
        self.backend.probe()
    }

    pub fn log(&self) -> Option<&CoachLog> {
        self.log.as_ref()
    }

    /// Scores one action (see the module docs for the flow).
    pub fn score_action(&self, req: &CoachRequest) -> CoachOutcome {
        self.score_all(vec![req.clone()], 1).pop().expect("one outcome per request")
    }

    /// Scores `reqs`, outcomes in request order: every first attempt goes to the backend at once (up to
    /// `concurrency` calls in flight, or one batch for a local model), then every format retry at once.
    pub fn score_all(&self, reqs: Vec<CoachRequest>, concurrency: usize) -> Vec<CoachOutcome> {
        let mut outcomes: Vec<Option<CoachOutcome>> = vec![None; reqs.len()];
        let mut pending: Vec<(usize, Pending)> = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            match self.prompt.render(req) {
                Ok(messages) => pending.push((i, Pending { messages, errors: Vec::new() })),
                Err(e) => {
                    let reason = format!("coach prompt failed to render: {e:#}");
                    outcomes[i] = Some(CoachOutcome::Unscored { reason });
                }
            }
        }
        for attempt in 1..=MAX_ATTEMPTS {
            let exchanges: Vec<(&CoachRequest, &[ChatMessage])> =
                pending.iter().map(|(i, p)| (&reqs[*i], p.messages.as_slice())).collect();
            let replies = self.backend.reply_all(&exchanges, concurrency);
            let mut retry = Vec::new();
            for ((i, mut p), (reply, latency_ms)) in pending.into_iter().zip(replies) {
                let outcome = match self.record(&reqs[i], &p.messages, attempt, reply, latency_ms) {
                    Err(reason) => CoachOutcome::Unscored { reason },
                    Ok((_, Ok(score))) => CoachOutcome::Scored { score, attempts: attempt },
                    Ok((reply, Err(e))) => {
                        p.errors.push(format!("attempt {attempt}: {e}"));
                        if attempt < MAX_ATTEMPTS {
                            p.messages = retry_messages(&p.messages, &reply, &e);
                            retry.push((i, p));
                            continue;
                        }
                        let reason = format!("no valid {SCORE_KEY} in the reply ({})", p.errors.join("; "));
                        CoachOutcome::Unscored { reason }
                    }
                };
                outcomes[i] = Some(outcome);
            }
            pending = retry;
        }
        outcomes.into_iter().map(|o| o.expect("every request resolved")).collect()
    }

    /// One backend reply, parsed and logged: the reply and its score, or why the action cannot be scored.
    fn record(
        &self,
        req: &CoachRequest,
        messages: &[ChatMessage],
        attempt: u32,
        reply: Result<String>,
        latency_ms: f64,
    ) -> Result<(String, Result<f32, ParseError>), String> {
        let result = reply.map(|reply| {
            let parsed = parse_score(&reply);
            (reply, parsed)
        });
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

    /// Scores the requests `produce` submits while it runs (the rollout), each as soon as it is submitted, on
    /// `concurrency` worker threads: the step then takes about max(rollout, coach), not their sum. Returns what
    /// `produce` returned and one outcome per submitted request, in submission order. A backend that does not
    /// overlap the rollout ([`CoachBackend::overlaps_rollout`]) scores them all at once after `produce`.
    pub fn score_during<R>(
        &self,
        concurrency: usize,
        produce: impl FnOnce(&mut dyn FnMut(CoachRequest)) -> R,
    ) -> (R, Vec<CoachOutcome>) {
        if !self.backend.overlaps_rollout() {
            let mut reqs = Vec::new();
            let produced = produce(&mut |req| reqs.push(req));
            return (produced, self.score_all(reqs, concurrency));
        }
        let (jobs, queue) = mpsc::channel::<(usize, CoachRequest)>();
        let queue = Mutex::new(queue);
        let done = Mutex::new(Vec::new());
        let produced = thread::scope(|s| {
            for _ in 0..concurrency.max(1) {
                s.spawn(|| loop {
                    // The lock is released before scoring, so workers score in parallel.
                    let job = lock(&queue).recv();
                    let Ok((i, req)) = job else { return };
                    let outcome = self.score_all(vec![req], 1).pop().expect("one outcome per request");
                    lock(&done).push((i, outcome));
                });
            }
            let mut submitted = 0;
            let produced = produce(&mut |req| {
                // The workers outlive `produce` (they end when `jobs` is dropped), so a send cannot fail.
                let _ = jobs.send((submitted, req));
                submitted += 1;
            });
            drop(jobs);
            produced
        });
        let mut done = done.into_inner().unwrap_or_else(PoisonError::into_inner);
        done.sort_unstable_by_key(|(i, _)| *i);
        (produced, done.into_iter().map(|(_, outcome)| outcome).collect())
    }
}

/// Locks a mutex, ignoring poisoning: the guarded data (a file, a counter) stays valid after a panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
