//! `POST /v1/chat/completions`: the request's fields, validated into a [`Job`], and the `chat.completion`
//! object of a finished one. Fields this server does not read (penalties, `user`, ...) are ignored.
use super::completion::{Completion, Outcome};
use super::error::ApiError;
use super::{completion_id, unix_now, Served};
use crate::sample::SamplingParams;
use crate::tokenizer::ChatMessage;
use anyhow::Result;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<InMessage>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// vLLM's extension; -1 or 0 means no cut.
    top_k: Option<i64>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<bool>,
    top_logprobs: Option<u64>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// A validated chat-completions request.
pub struct Job {
    pub prompt: Vec<u32>,
    pub budget: usize,
    pub params: SamplingParams,
    pub stops: Vec<String>,
    pub logprobs: bool,
    pub stream: bool,
    pub include_usage: bool,
}

impl Job {
    /// Parses and validates a chat-completions body.
    pub fn parse(served: &Served, body: &[u8]) -> Result<Job, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {e}")))?;
        let req: ChatRequest = serde_json::from_value(value)
            .map_err(|e| ApiError::invalid("invalid_request", format!("invalid chat completion request: {e}")))?;
        if let Some(id) = &req.model {
            served.check_model(id).map_err(|e| e.param("model"))?;
        }
        if req.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("invalid_value", "n must be 1: this server returns one choice").param("n"));
        }
        if req.top_logprobs.is_some_and(|k| k > 0) {
            let e = ApiError::invalid("unsupported", "top_logprobs is not supported (logprobs is)");
            return Err(e.param("top_logprobs"));
        }
        let params = sampling(&req)?;
        let messages = chat_messages(req.messages)?;
        let prompt = served.tok.encode_chat(&messages).map_err(|e| {
            let e =
                ApiError::invalid("invalid_messages", format!("the chat template cannot render these messages: {e:#}"));
            e.param("messages")
        })?;
        let budget = served.budget(prompt.len(), req.max_completion_tokens.or(req.max_tokens))?;
        let stops = match req.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        Ok(Job {
            prompt,
            budget,
            params,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            logprobs: req.logprobs.unwrap_or(false),
            stream: req.stream.unwrap_or(false),
            include_usage: req.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        })
    }
}

/// OpenAI's defaults: temperature 1 and no nucleus cut; a random seed unless one is given.
fn sampling(req: &ChatRequest) -> Result<SamplingParams, ApiError> {
    let top_k = match req.top_k {
        None | Some(-1) => 0,
        Some(k) => usize::try_from(k).map_err(|_| {
            ApiError::invalid("invalid_value", format!("top_k must be -1 or 0 (no cut) or positive, got {k}"))
                .param("top_k")
        })?,
    };
    let params = SamplingParams {
        temperature: req.temperature.unwrap_or(1.0),
        top_k,
        top_p: req.top_p.unwrap_or(1.0),
        seed: req.seed.map_or_else(rand::random, |s| s as u64),
    };
    params.validate().map_err(|e| ApiError::invalid("invalid_value", e.to_string()))?;
    Ok(params)
}

/// The messages as the chat template takes them: `developer` is OpenAI's newer name for `system`, and a list
/// of text parts is joined with newlines.
fn chat_messages(messages: Vec<InMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("invalid_value", "messages must not be empty").param("messages"));
    }
    messages
        .into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    let message = format!("unsupported message role {other:?}: use system, user or assistant");
                    return Err(ApiError::invalid("invalid_value", message).param("messages"));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .map(|p| match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => Ok(t),
                        _ => Err(ApiError::invalid(
                            "unsupported",
                            "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        )
                        .param("messages")),
                    })
                    .collect::<Result<Vec<String>, ApiError>>()?
                    .join("\n"),
            };
            Ok(ChatMessage::new(role, &content))
        })
        .collect()
}

/// A non-streamed answer: a `chat.completion` object.
pub async fn completion(served: &Served, job: &Job) -> Result<Value, ApiError> {
    let generated = async { Completion::start(served, job)?.run(&served.tok).await };
    let out = generated.await.map_err(|e| ApiError::generation(&e))?;
    served.metrics.completed(job.prompt.len(), out.completion_tokens);
    let logprobs = logprobs_json(served, &out).map_err(|e| ApiError::generation(&e))?;
    Ok(json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": unix_now(),
        "model": served.name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "logprobs": logprobs,
            "finish_reason": out.finish,
        }],
        "usage": usage(job, &out),
    }))
}

/// OpenAI's `logprobs` of a choice: the chosen tokens only (no alternatives), or null when not asked for.
pub fn logprobs_json(served: &Served, out: &Outcome) -> Result<Value> {
    let Some(pairs) = &out.logprobs else { return Ok(Value::Null) };
    let content = pairs
        .iter()
        .map(|&(id, logprob)| {
            let token = served.tok.decode(&[id], false)?;
            Ok(json!({"token": token, "logprob": logprob, "bytes": token.as_bytes(), "top_logprobs": []}))
        })
        .collect::<Result<Vec<Value>>>()?;
    Ok(json!({ "content": content }))
}

pub fn usage(job: &Job, out: &Outcome) -> Value {
    let (prompt, completion) = (job.prompt.len(), out.completion_tokens);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}
