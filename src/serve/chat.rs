//! `POST /v1/chat/completions`: the request's fields, validated into a [`Job`] (the fields it shares with
//! `/v1/completions` by `request`), and the `chat.completion` object of a finished one. Fields this server
//! does not read (`user`, ...) are ignored.
//!
//! The messages (and the request's `tools`) are rendered by the model's chat template;
//! `response_format` (`json_object`, `json_schema`) and forced tool calls constrain the output with a
//! grammar (`crate::constrain`); tool-call markup is parsed into `tool_calls` (`tools`).
use super::completion::{Completion, Outcome};
use super::error::ApiError;
use super::logprobs::chat_content;
use super::request::{parse_body, top_logprobs, Api, Common, Job};
use super::tools::{parse_hermes, tool_calls_json, Tools};
use super::{completion_id, unix_now, Served};
use crate::constrain::Grammar;
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
    /// An assistant message's calls.
    tool_calls: Option<Vec<Value>>,
    /// A `tool` message's answer to which call, and the tool's name.
    tool_call_id: Option<String>,
    name: Option<String>,
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
    let logprobs = req.logprobs.unwrap_or(false);
    let top = top_logprobs("top_logprobs", req.top_logprobs)?;
    if top > 0 && !logprobs {
        let message = "top_logprobs needs logprobs: true";
        return Err(ApiError::invalid("invalid_value", message).param("top_logprobs"));
    }
    let mut job = req.common.job(served, Api::Chat, top)?;
    job.logprobs = logprobs;
    let tools = Tools::parse(req.tools, req.tool_choice, &served.tool_format)?;
    let format = response_format(served, req.response_format)?;
    if let Some(t) = &tools {
        job.grammar = t.forced(served.grammars()?)?;
        job.tool_calls = t.parses();
    }
    if format.is_some() {
        if job.grammar.is_some() {
            let message = "response_format cannot be combined with a forced tool call (tool_choice required or a \
                           function)";
            return Err(ApiError::invalid("invalid_value", message).param("response_format"));
        }
        job.grammar = format;
    }
    let messages = chat_messages(served, req.messages)?;
    let text = served.tok.render_chat(&messages, tools.as_ref().map(|t| &t.defs[..]), true).map_err(|e| {
        let e = ApiError::invalid("invalid_messages", format!("the chat template cannot render these messages: {e:#}"));
        e.param("messages")
    })?;
    let prompt =
        served.tok.encode(&text, false).map_err(|e| ApiError::invalid("invalid_messages", format!("{e:#}")))?;
    job.add_prompt(served, prompt, req.max_completion_tokens.or(req.max_tokens))?;
    Ok(job)
}

/// `response_format`: `text` (or none), `json_object`, or `json_schema` with its `schema`; the latter two as
/// the grammar the output must follow.
fn response_format(served: &Served, format: Option<Value>) -> Result<Option<Grammar>, ApiError> {
    let bad = |message: String| ApiError::invalid("invalid_value", message).param("response_format");
    let Some(format) = format.filter(|f| !f.is_null()) else { return Ok(None) };
    let grammar = match format["type"].as_str() {
        Some("text") => return Ok(None),
        Some("json_object") => served.grammars()?.json_object(),
        Some("json_schema") => {
            let schema = &format["json_schema"]["schema"];
            if !schema.is_object() && !schema.is_boolean() {
                return Err(bad("response_format json_schema needs json_schema.schema, a JSON schema".into()));
            }
            served.grammars()?.json_schema(schema)
        }
        _ => return Err(bad("response_format type must be text, json_object or json_schema".into())),
    };
    grammar.map(Some).map_err(|e| {
        let message = format!("this server cannot enforce the response_format schema: {e:#}");
        ApiError::invalid("unsupported", message).param("response_format")
    })
}

/// The messages as the chat template takes them (JSON objects, as transformers passes them): `developer`
/// is OpenAI's newer name for `system`, a list of text parts is joined with newlines, an assistant
/// message's `tool_calls` carry their `arguments` as objects, and a `tool` message its `tool_call_id` (and
/// `name`). Tool messages and calls need a template with tool support.
fn chat_messages(served: &Served, messages: Vec<InMessage>) -> Result<Vec<Value>, ApiError> {
    let bad = |message: String| ApiError::invalid("invalid_value", message).param("messages");
    if messages.is_empty() {
        return Err(bad("messages must not be empty".into()));
    }
    let tool_support = |what: &str| match &served.tool_format {
        Ok(_) => Ok(()),
        Err(why) => Err(ApiError::invalid("unsupported", format!("{what}: {why}")).param("messages")),
    };
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => {
                    tool_support("a tool message")?;
                    "tool"
                }
                other => {
                    return Err(bad(format!("unsupported message role {other:?}: use system, user, assistant or tool")))
                }
            };
            let calls = m.tool_calls.filter(|c| !c.is_empty());
            if calls.is_some() {
                if role != "assistant" {
                    return Err(bad(format!("messages[{i}]: only assistant messages carry tool_calls")));
                }
                tool_support("an assistant message with tool_calls")?;
            }
            let content = match m.content {
                None if calls.is_some() => Value::Null,
                None => Value::String(String::new()),
                Some(Content::Text(t)) => Value::String(t),
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
                    .join("\n")
                    .into(),
            };
            let mut message = json!({"role": role, "content": content});
            if let Some(calls) = calls {
                let calls: Result<Vec<Value>, ApiError> = calls.iter().map(|c| template_call(i, c)).collect();
                message["tool_calls"] = Value::Array(calls?);
            }
            if role == "tool" {
                if let Some(id) = m.tool_call_id {
                    message["tool_call_id"] = id.into();
                }
                if let Some(name) = m.name {
                    message["name"] = name.into();
                }
            }
            Ok(message)
        })
        .collect()
}

/// An assistant message's tool call as templates take it: OpenAI's call with its `arguments` string parsed
/// back into JSON (templates write `arguments | tojson`).
fn template_call(i: usize, call: &Value) -> Result<Value, ApiError> {
    let f = &call["function"];
    let (Some(name), Some(args)) = (f["name"].as_str(), f.get("arguments")) else {
        let message = format!("messages[{i}].tool_calls: each call needs function.name and function.arguments");
        return Err(ApiError::invalid("invalid_value", message).param("messages"));
    };
    let arguments = match args {
        Value::String(s) => serde_json::from_str::<Value>(s).unwrap_or_else(|_| args.clone()),
        other => other.clone(),
    };
    let mut out = json!({"type": "function", "function": {"name": name, "arguments": arguments}});
    if let Some(id) = call.get("id").filter(|id| id.is_string()) {
        out["id"] = id.clone();
    }
    Ok(out)
}

/// A finished choice's message and finish reason: its tool calls when the job parses them and the text
/// holds some (`tools`), else its text.
fn message(job: &Job, out: &Outcome) -> (Value, &'static str) {
    if job.tool_calls {
        if let Some(p) = parse_hermes(&out.text) {
            let message =
                json!({"role": "assistant", "content": p.content, "tool_calls": tool_calls_json(&p.calls, false)});
            return (message, "tool_calls");
        }
    }
    (json!({"role": "assistant", "content": out.text}), out.finish)
}

/// A non-streamed answer: a `chat.completion` object with `n` choices.
pub async fn completion(served: &Served, job: &Job) -> Result<Value, ApiError> {
    let outs = Completion::run_all(served, job, Vec::new()).await?;
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(index, out)| {
            let (message, finish) = message(job, out);
            json!({
                "index": index,
                "message": message,
                "logprobs": out.logprobs.as_ref().map(|t| json!({"content": chat_content(&served.tok, t)})),
                "finish_reason": finish,
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
