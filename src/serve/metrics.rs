//! `GET /metrics`: the server's counters and the engine's load in the Prometheus text format (version 0.0.4):
//! requests answered, connections, completions in flight, tokens, queue depth and KV blocks in use.
use crate::engine::ServiceLoad;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Counters {
    /// Responses by HTTP status.
    responses: Mutex<BTreeMap<u16, u64>>,
    connections: Arc<AtomicUsize>,
    connections_total: AtomicU64,
    /// Completions being generated (a streamed one until its body ends or is dropped).
    running: Arc<AtomicUsize>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// Counts one in a gauge while it lives.
pub struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn hold(gauge: &Arc<AtomicUsize>) -> Held {
    gauge.fetch_add(1, Relaxed);
    Held(gauge.clone())
}

impl Counters {
    pub fn connection(&self) -> Held {
        self.connections_total.fetch_add(1, Relaxed);
        hold(&self.connections)
    }

    pub fn completion(&self) -> Held {
        hold(&self.running)
    }

    pub fn responded(&self, status: u16) {
        *self.responses.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_default() += 1;
    }

    /// A completion delivered whole.
    pub fn completed(&self, prompt_tokens: usize, completion_tokens: usize) {
        self.prompt_tokens.fetch_add(prompt_tokens as u64, Relaxed);
        self.completion_tokens.fetch_add(completion_tokens as u64, Relaxed);
    }

    pub fn render(&self, load: &ServiceLoad, engine_alive: bool) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: u64| [(String::new(), v)];
        let responses: Vec<(String, u64)> = self
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(status, n)| (format!("{{status=\"{status}\"}}"), *n))
            .collect();
        metric("mappa_http_responses_total", "counter", "HTTP responses sent, by status.", &responses);
        let (open, total) = (self.connections.load(Relaxed) as u64, self.connections_total.load(Relaxed));
        metric("mappa_http_connections_open", "gauge", "Client connections open.", &one(open));
        metric("mappa_http_connections_total", "counter", "Client connections accepted.", &one(total));
        let running = self.running.load(Relaxed) as u64;
        metric("mappa_completions_running", "gauge", "Completions being generated or streamed.", &one(running));
        let prompt = self.prompt_tokens.load(Relaxed);
        metric("mappa_prompt_tokens_total", "counter", "Prompt tokens of delivered completions.", &one(prompt));
        let completion = self.completion_tokens.load(Relaxed);
        metric("mappa_completion_tokens_total", "counter", "Tokens of delivered completions.", &one(completion));
        let l = load;
        metric("mappa_engine_up", "gauge", "1 while the engine thread runs.", &one(engine_alive as u64));
        metric("mappa_engine_sequences_running", "gauge", "Sequences in the batch.", &one(l.running as u64));
        metric("mappa_engine_sequences_waiting", "gauge", "Sequences queued for admission.", &one(l.waiting as u64));
        metric("mappa_engine_kv_blocks_used", "gauge", "KV blocks held by sequences.", &one(l.kv_blocks_used as u64));
        metric("mappa_engine_kv_blocks", "gauge", "KV blocks in the pool.", &one(l.kv_blocks as u64));
        metric("mappa_engine_generated_tokens_total", "counter", "Tokens sampled.", &one(l.generated_tokens));
        metric("mappa_engine_prefill_tokens_total", "counter", "Prompt tokens computed.", &one(l.prefill_tokens));
        out
    }
}
