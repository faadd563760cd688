//! `POST /v1/chat/completions`: the request's fields, validated into a [`Job`] (the fields it shares with
//! `/v1/completions` by `request`), and the `chat.completion` object of a finished one. Fields this server
//! does not read (`user`, ...) are ignored.
use super::completion::Completion;
use super::error::ApiError;
use super::logprobs::chat_content;
use super::request::{parse_body, top_logprobs, unsupported, Api, Common, Job};
use super::{completion_id, unix_now, Served};
use crate::tokenizer::ChatMessage;
use anyhow::Result;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(flatten)]
    common: Common,
    messages: Vec<InMessage>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    logprobs: Option<bool>,
    top_logprobs: Option<u64>,
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

/// Parses and validates a chat-completions body.
pub fn parse(served: &Served, body: &[u8]) -> Result<Job, ApiError> {
    let req: ChatRequest = parse_body(body, "chat completion request")?;
    refuse_unsupported(&req)?;
    let logprobs = req.logprobs.unwrap_or(false);
    let top = top_logprobs("top_logprobs", req.top_logprobs)?;
    if top > 0 && !logprobs {
        let message = "top_logprobs needs logprobs: true";
        return Err(ApiError::invalid("invalid_value", message).param("top_logprobs"));
    }
    let mut job = req.common.job(served, Api::Chat, top)?;
    job.logprobs = logprobs;
    let messages = chat_messages(req.messages)?;
    let prompt = served.tok.encode_chat(&messages).map_err(|e| {
        let e = ApiError::invalid("invalid_messages", format!("the chat template cannot render these messages: {e:#}"));
        e.param("messages")
    })?;
    job.add_prompt(served, prompt, req.max_completion_tokens.or(req.max_tokens))?;
    Ok(job)
}

/// Fields this server does not implement are refused, never ignored: a client that sets them would
/// otherwise get an answer that silently differs from what it asked for. Their neutral values pass.
fn refuse_unsupported(req: &ChatRequest) -> Result<(), ApiError> {
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(unsupported("tools", "no tool calling yet"));
    }
    if req.tool_choice.as_ref().is_some_and(|c| c != "none" && !c.is_null()) {
        return Err(unsupported("tool_choice", "only \"none\" is accepted"));
    }
    if req.response_format.as_ref().is_some_and(|f| f["type"] != "text") {
        return Err(unsupported("response_format", "only {\"type\": \"text\"} is accepted"));
    }
    Ok(())
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
        let runs = Completion::start(served, job, Vec::new())?.into_iter().map(|c| c.run(&served.tok));
        futures_util::future::try_join_all(runs).await
    };
    let outs = generated.await.map_err(|e| ApiError::generation(&e))?;
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(index, out)| {
            served.metrics.completed(job.prompts[out.prompt].ids.len(), out.completion_tokens);
            json!({
                "index": index,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": out.logprobs.as_ref().map(|t| json!({"content": chat_content(&served.tok, t)})),
                "finish_reason": out.finish,
            })
        })
        .collect();
    Ok(json!({
        "id": completion_id(Api::Chat),
        "object": "chat.completion",
        "created": unix_now(),
        "model": served.name,
        "choices": choices,
        "usage": job.usage(&outs),
    }))
}
