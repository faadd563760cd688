//! A scripted agent: fixed replies instead of a model, every request recorded, so rollouts run the same way
//! every time (tool calls included) and tests can check exactly what each agent was fed.
use mappa::engine::{FinishReason, Generation};
use mappa::rollout::{GenRequest, Generator};
use std::sync::Mutex;

type ReplyFn = Box<dyn Fn(usize, usize) -> String + Sync>;

/// Replies with `reply(call, request_index)`, capped at the request's budget, and records every call.
pub struct Scripted {
    reply: ReplyFn,
    calls: Mutex<Vec<Vec<GenRequest>>>,
}

impl Scripted {
    pub fn new(reply: impl Fn(usize, usize) -> String + Sync + 'static) -> Scripted {
        Scripted { reply: Box::new(reply), calls: Mutex::new(Vec::new()) }
    }

    pub fn fixed(text: &'static str) -> Scripted {
        Scripted::new(move |_, _| text.to_string())
    }

    pub fn calls(&self) -> Vec<Vec<GenRequest>> {
        self.calls.lock().unwrap().clone()
    }
}

impl Generator for Scripted {
    fn generate_batch(&self, reqs: &[GenRequest], stop_ids: &[u32]) -> anyhow::Result<Vec<Generation>> {
        let mut calls = self.calls.lock().unwrap();
        let call = calls.len();
        calls.push(reqs.to_vec());
        Ok(reqs
            .iter()
            .enumerate()
            .map(|(r, req)| {
                let mut tokens =
                    super::chat_tokenizer().encode(&(self.reply)(call, r), false).expect("encoding a scripted reply");
                tokens.truncate(req.max_new_tokens);
                let finish = match tokens.last() {
                    Some(t) if stop_ids.contains(t) => FinishReason::Stop,
                    _ => FinishReason::Length,
                };
                Generation {
                    logprobs: vec![-0.5; tokens.len()],
                    top_logprobs: Vec::new(),
                    tokens,
                    finish,
                    prefill_s: 0.0,
                    decode_s: 0.0,
                }
            })
            .collect())
    }
}
