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
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    response_format: Option<Value>,
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
    /// Choices, each its own sample of the prompt.
    pub n: usize,
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
        refuse_unsupported(&req)?;
        let n = req.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid("invalid_value", format!("n must be in [1, {MAX_N}], got {n}")).param("n"));
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
        if stops.len() > MAX_STOPS {
            let message = format!("stop may hold at most {MAX_STOPS} sequences, got {}", stops.len());
            return Err(ApiError::invalid("invalid_value", message).param("stop"));
        }
        Ok(Job {
            prompt,
            n: n as usize,
            budget,
            params,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            logprobs: req.logprobs.unwrap_or(false),
            stream: req.stream.unwrap_or(false),
            include_usage: req.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        })
    }
}

/// OpenAI's bounds.
const MAX_N: u64 = 128;
const MAX_STOPS: usize = 4;
const MAX_TEMPERATURE: f32 = 2.0;

/// Fields this server does not implement are refused, never ignored: a client that sets them would
/// otherwise get an answer that silently differs from what it asked for. Their neutral values pass.
fn refuse_unsupported(req: &ChatRequest) -> Result<(), ApiError> {
    let unsupported = |param: &'static str, what: &str| {
        Err(ApiError::invalid("unsupported", format!("{param} is not supported by this server ({what})")).param(param))
    };
    if req.top_logprobs.is_some_and(|k| k > 0) {
        return unsupported("top_logprobs", "logprobs is");
    }
    for (param, value) in [("presence_penalty", req.presence_penalty), ("frequency_penalty", req.frequency_penalty)] {
        if value.is_some_and(|v| v != 0.0) {
            return unsupported(param, "only 0 is accepted");
        }
    }
    if req.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return unsupported("logit_bias", "only an empty map is accepted");
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return unsupported("tools", "no tool calling yet");
    }
    if req.tool_choice.as_ref().is_some_and(|c| c != "none" && !c.is_null()) {
        return unsupported("tool_choice", "only \"none\" is accepted");
    }
    if req.response_format.as_ref().is_some_and(|f| f["type"] != "text") {
        return unsupported("response_format", "only {\"type\": \"text\"} is accepted");
    }
    Ok(())
}

/// OpenAI's defaults: temperature 1 and no nucleus cut; a random seed unless one is given. `top_p = 0` keeps
/// only the most likely token, as it does at OpenAI.
fn sampling(req: &ChatRequest) -> Result<SamplingParams, ApiError> {
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=MAX_TEMPERATURE).contains(&temperature) {
        let message = format!("temperature must be in [0, {MAX_TEMPERATURE}], got {temperature}");
        return Err(ApiError::invalid("invalid_value", message).param("temperature"));
    }
    let top_k = match req.top_k {
        None | Some(-1) => 0,
        Some(k) => usize::try_from(k).map_err(|_| {
            ApiError::invalid("invalid_value", format!("top_k must be -1 or 0 (no cut) or positive, got {k}"))
                .param("top_k")
        })?,
    };
    let (top_k, top_p) = match req.top_p.unwrap_or(1.0) {
        0.0 => (1, 1.0),
        p => (top_k, p),
    };
    let params = SamplingParams { temperature, top_k, top_p, seed: req.seed.map_or_else(rand::random, |s| s as u64) };
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

/// A non-streamed answer: a `chat.completion` object with `n` choices.
pub async fn completion(served: &Served, job: &Job) -> Result<Value, ApiError> {
    let generated = async {
        let runs = Completion::start(served, job)?.into_iter().map(|c| c.run(&served.tok));
        futures_util::future::try_join_all(runs).await
    };
    let outs = generated.await.map_err(|e| ApiError::generation(&e))?;
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(index, out)| {
            served.metrics.completed(job.prompt.len(), out.completion_tokens);
            json!({
                "index": index,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": logprobs_json(served, out),
                "finish_reason": out.finish,
            })
        })
        .collect();
    Ok(json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": unix_now(),
        "model": served.name,
        "choices": choices,
        "usage": usage(job, &outs),
    }))
}

/// OpenAI's `logprobs` of a choice (the chosen tokens, no alternatives), or null when not asked for. Each
/// token's `bytes` are its exact bytes, so they rebuild the text even where a character spans tokens; a
/// token that a stop string began in keeps only its bytes before the stop, and tokens after are left out,
/// so the list covers exactly the content. (Where the tokens' bytes do not spell the text, e.g. a special
/// token inside it, each token is given as it decodes alone.)
pub fn logprobs_json(served: &Served, out: &Outcome) -> Value {
    let Some(pairs) = &out.logprobs else { return Value::Null };
    let tok = &served.tok;
    let mut tokens: Vec<Vec<u8>> = pairs.iter().map(|&(id, _)| tok.token_bytes(id).unwrap_or_default()).collect();
    let spelled: Vec<u8> = tokens.concat();
    let text = out.text.as_bytes();
    if !spelled.starts_with(text) {
        // SentencePiece decoders drop the space that begins the first piece.
        if spelled.first() == Some(&b' ') && spelled[1..].starts_with(text) {
            tokens[0].remove(0);
        } else {
            let alone = |&(id, _): &(u32, f32)| tok.decode(&[id], false).unwrap_or_default().into_bytes();
            tokens = pairs.iter().map(alone).collect();
        }
    }
    let mut left = if tokens.concat().starts_with(text) { text.len() } else { usize::MAX };
    let mut content = Vec::new();
    for (mut bytes, &(_, logprob)) in tokens.into_iter().zip(pairs) {
        if left == 0 {
            break;
        }
        bytes.truncate(left);
        left -= bytes.len();
        let token = String::from_utf8_lossy(&bytes);
        content.push(json!({"token": token, "logprob": logprob, "bytes": bytes, "top_logprobs": []}));
    }
    json!({ "content": content })
}

/// The prompt counts once, however many choices share it.
pub fn usage(job: &Job, outs: &[Outcome]) -> Value {
    let prompt = job.prompt.len();
    let completion: usize = outs.iter().map(|o| o.completion_tokens).sum();
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}
