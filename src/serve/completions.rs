//! `POST /v1/completions`: OpenAI's legacy text-completion endpoint, what evaluation harnesses
//! (lm-eval-harness's `local-completions`, ...) call to score and to generate.
//!
//! - `prompt`: a string, a list of strings (a batch: the choices of prompt p are `p * n .. (p + 1) * n`),
//!   a list of token ids, or a list of such lists. Strings are encoded with the tokenizer's own special
//!   tokens (a BOS where the model has one), as raw text, without the chat template.
//! - `max_tokens` (default 16, as OpenAI's; 0 is allowed), `echo`, `logprobs` (the number of alternatives
//!   per token, 0 to 20: OpenAI stops at 5, vLLM at 20), `stop`, `n`, `seed`, `temperature`, `top_p`,
//!   `top_k`, `stream`; `suffix`, `best_of` other than `n`, penalties and `logit_bias` are refused.
//! - `echo` puts the prompt before each choice's text, as its tokens decode (special tokens included: that
//!   is the prompt string itself for a byte-level tokenizer that adds no BOS). With `logprobs`, the prompt's
//!   tokens come first in the lists, each with the log-prob of it given the ones before (one forward pass,
//!   `EngineService::score`) and its alternatives; the first has none (null), as at OpenAI. `echo` with
//!   `max_tokens: 0` is pure scoring. `text_offset` counts characters from the start of the choice's text.
//! - Log-probs are those of the distribution the tokens are drawn from: softmax(logits / T), with T = 1
//!   when greedy (`crate::sample`); echoed prompt tokens are scored at the same T.
//!
//! Validation, the generation path and streaming are the ones chat uses (`request`, `completion`,
//! `stream`); only the prompt, `echo`, the legacy `logprobs` and the response's shape are this file's.
use super::completion::{Completion, Echo};
use super::error::ApiError;
use super::http::{json_response, Reply};
use super::logprobs::{legacy, place_all};
use super::request::{invalid, parse_body, top_logprobs, unsupported, Api, Common, Job};
use super::{completion_id, stream, unix_now, Served};
use crate::model::Backend;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(flatten)]
    common: Common,
    prompt: Option<Value>,
    max_tokens: Option<u64>,
    echo: Option<bool>,
    logprobs: Option<u64>,
    suffix: Option<String>,
    best_of: Option<u64>,
}

/// OpenAI's default completion budget.
const DEFAULT_MAX_TOKENS: u64 = 16;
/// OpenAI's bound on a batch of prompts; it bounds the choices of one request (prompts x n) too.
const MAX_CHOICES: usize = 2048;

/// Answers a completions request, streamed or whole.
pub async fn respond(served: &Arc<Served>, body: &[u8]) -> Result<Reply, ApiError> {
    let job = parse(served, body)?;
    let echoes = echoes(served, &job).await?;
    if job.stream {
        return stream::response(served.clone(), job, echoes);
    }
    let _running = served.metrics.completion();
    completion(served, &job, echoes).await.map(|v| json_response(200, &v))
}

/// Parses and validates a completions body.
fn parse(served: &Served, body: &[u8]) -> Result<Job, ApiError> {
    let req: CompletionRequest = parse_body(body, "completion request")?;
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("suffix", "no insertion"));
    }
    let top = top_logprobs("logprobs", req.logprobs)?;
    let n = req.common.n_or_default();
    if req.best_of.is_some_and(|b| b != n) {
        return Err(unsupported("best_of", "only best_of = n is accepted"));
    }
    let mut job = req.common.job(served, Api::Text, top)?;
    job.logprobs = req.logprobs.is_some();
    job.echo = req.echo.unwrap_or(false);
    if job.echo && job.logprobs && served.backend == Backend::Cuda {
        let message = "prompt log-probs (echo with logprobs) are not supported on the cuda backend yet";
        return Err(ApiError::invalid("unsupported", message).param("echo"));
    }
    let prompts = prompt_ids(served, req.prompt)?;
    if prompts.len().saturating_mul(job.n) > MAX_CHOICES {
        let message = format!("{} prompts x n = {} is more than {MAX_CHOICES} choices", prompts.len(), job.n);
        return Err(invalid("prompt", message));
    }
    for ids in prompts {
        job.add_prompt(served, ids, Some(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)))?;
    }
    Ok(job)
}

/// The prompts' tokens: a string, a list of strings, a list of ids or a list of such lists.
fn prompt_ids(served: &Served, prompt: Option<Value>) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = |message: String| invalid("prompt", message);
    let encode =
        |text: &str| served.tok.encode(text, true).map_err(|e| bad(format!("the prompt cannot be tokenized: {e:#}")));
    let ids = |list: &[Value]| -> Result<Vec<u32>, ApiError> {
        list.iter()
            .map(|v| match v.as_u64() {
                Some(id) if id < served.vocab as u64 => Ok(id as u32),
                _ => Err(bad(format!("token id {v} is not in the vocabulary [0, {})", served.vocab))),
            })
            .collect()
    };
    let shape = "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids";
    let prompts = match prompt {
        None => return Err(bad("prompt is required".into())),
        Some(Value::String(s)) => vec![encode(&s)?],
        Some(Value::Array(list)) if list.is_empty() => return Err(bad("prompt must not be an empty list".into())),
        Some(Value::Array(list)) => match &list[0] {
            Value::String(_) => list
                .iter()
                .map(|v| v.as_str().ok_or_else(|| bad(shape.into())).and_then(encode))
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![ids(&list)?],
            Value::Array(_) => list
                .iter()
                .map(|v| v.as_array().ok_or_else(|| bad(shape.into())).and_then(|l| ids(l)))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad(shape.into())),
        },
        Some(_) => return Err(bad(shape.into())),
    };
    if prompts.len() > MAX_CHOICES {
        return Err(bad(format!("at most {MAX_CHOICES} prompts, got {}", prompts.len())));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(bad(format!("prompt {i} has no tokens")));
    }
    Ok(prompts)
}

/// Each prompt as it is echoed (none without `echo`), scored when log-probs are asked for.
async fn echoes(served: &Served, job: &Job) -> Result<Vec<Echo>, ApiError> {
    if !job.echo {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(job.prompts.len());
    for p in &job.prompts {
        let text = served.tok.decode(&p.ids, false).map_err(|e| ApiError::generation(&e))?;
        let mut echo = Echo { tokens: Vec::new(), text };
        if job.logprobs {
            let scored = served.engine.score(p.ids.clone(), job.logprob_temperature(), job.params.top_logprobs);
            let scores = match scored.map_err(|e| ApiError::generation(&e))?.await {
                Ok(Ok(scores)) => scores,
                Ok(Err(e)) => return Err(ApiError::generation(&anyhow::anyhow!("scoring the prompt: {e}"))),
                Err(_) => return Err(ApiError::generation(&anyhow::anyhow!("the engine stopped"))),
            };
            echo.tokens = place_all(&served.tok, &p.ids, &echo.text, |i| match i {
                0 => (None, Vec::new()),
                i => (Some(scores.logprobs[i - 1]), scores.top[i - 1].clone()),
            });
        }
        out.push(echo);
    }
    Ok(out)
}

/// A non-streamed answer: a `text_completion` object with every prompt's `n` choices.
async fn completion(served: &Served, job: &Job, echoes: Vec<Echo>) -> Result<Value, ApiError> {
    let outs = Completion::run_all(served, job, echoes).await?;
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(index, out)| {
            json!({
                "index": index,
                "text": out.text,
                "logprobs": out.logprobs.as_ref().map(|t| legacy(&served.tok, t)),
                "finish_reason": out.finish,
            })
        })
        .collect();
    Ok(json!({
        "id": completion_id(Api::Text),
        "object": "text_completion",
        "created": unix_now(),
        "model": served.name,
        "choices": choices,
        "usage": job.usage(&outs),
    }))
}
