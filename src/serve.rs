//! `mappa serve`: an OpenAI-compatible HTTP server for one model (a Hugging Face directory, e.g. a training
//! checkpoint, or a .gguf file) on the CPU backend. Any OpenAI client, our own [`crate::coach::HttpCoach`]
//! included, can then chat with a model or a checkpoint: to try it, to use it as a coach, to evaluate it.
//!
//! Endpoints: `GET /v1/models`, `GET /v1/models/{id}` and `POST /v1/chat/completions` (text messages;
//! `temperature`, `top_p`, `top_k`, `seed`, `max_tokens`/`max_completion_tokens`, `stop`, `n` = 1, `logprobs`,
//! `stream`, `stream_options.include_usage`). Errors are OpenAI's JSON (`{"error": {"message", "type", "code"}}`).
//!
//! - tiny_http parses the requests; a few worker threads take them from its queue and submit them to one
//!   engine thread ([`EngineService`]), so concurrent requests decode together in one continuous batch.
//! - Decoding is the engine's, the same as in rollouts: greedy at temperature 0, and the stop token ends the
//!   text without being part of the content. A stop string ends generation at once: the worker drops its
//!   channel and the engine aborts the sequence.
//! - The token budget is `max_tokens` (else `--max-tokens`), capped by the room the prompt leaves in the
//!   model's context; a prompt that leaves no room is a 400.
//! - A stream is written to the connection by hand, one flushed HTTP chunk per event: tiny_http's own chunked
//!   responses buffer 8 KiB before sending anything, which would hold the tokens back. Text that may still
//!   change (the start of a stop string, an incomplete UTF-8 character) is held back until it is settled.
use crate::engine::{EngineConfig, EngineService, FinishReason, Update};
use crate::model::BackendChoice;
use crate::sample::SamplingParams;
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use tiny_http::{HTTPVersion, Header, Method, Request, Response, Server};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A Hugging Face model directory (e.g. a training checkpoint) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port; the startup line on stderr names the one bound.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model id that /v1/models reports and requests may name [default: the model's directory name or
    /// file stem].
    #[arg(long)]
    pub name: Option<String>,
    /// Completion token budget of requests that set none.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Requests handled at once.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// auto: CUDA when it can run here, else the CPU.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub device: BackendChoice,
    /// On a GPU, the fraction of the device memory free after loading that the KV pool takes.
    #[arg(long, default_value_t = EngineConfig::default().kv_fraction)]
    pub kv_fraction: f32,
}

/// Most connection workers (each is a thread).
const MAX_WORKERS: usize = 1024;

/// Largest request body read; a larger one is a 413.
const MAX_BODY: u64 = 16 << 20;

pub fn run(a: ServeArgs) -> Result<()> {
    ensure!(a.max_tokens > 0, "--max-tokens must be at least 1");
    ensure!(a.workers > 0 && a.workers <= MAX_WORKERS, "--workers must be in [1, {MAX_WORKERS}], got {}", a.workers);
    ensure!(a.kv_fraction > 0.0 && a.kv_fraction <= 0.95, "--kv-fraction must be in (0, 0.95], got {}", a.kv_fraction);
    let engine = Served::load(&a)?;
    let server =
        Server::http((a.host.as_str(), a.port)).map_err(|e| anyhow!("cannot listen on {}:{}: {e}", a.host, a.port))?;
    let addr = server.server_addr().to_ip().context("the server is not listening on an IP address")?;
    eprintln!("mappa serve: listening on http://{addr} (model {})", engine.name);
    std::thread::scope(|s| {
        for _ in 0..a.workers {
            s.spawn(|| loop {
                match server.recv() {
                    Ok(rq) => handle(&engine, rq),
                    Err(e) => eprintln!("mappa serve: {e}"),
                }
            });
        }
    });
    Ok(())
}

/// What the workers share, read-only.
struct Served {
    engine: EngineService,
    tok: Tokenizer,
    name: String,
    /// The model's context length (`max_position_embeddings`): prompt and completion together.
    context: usize,
    default_max_tokens: usize,
    /// Unix seconds at startup: the model's `created`.
    created: u64,
}

impl Served {
    fn load(a: &ServeArgs) -> Result<Served> {
        let backend = crate::model::resolve_and_report(a.device, crate::model::Work::Inference, "mappa serve")?;
        let loaded = crate::loader::load(&a.model)?;
        let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config)?;
        let model = crate::model::load(&loaded, backend)
            .with_context(|| format!("building the {backend} model from {}", a.model.display()))?;
        // The engine thread lives as long as the process: serve never returns while listening.
        let cfg = EngineConfig { kv_fraction: a.kv_fraction, ..EngineConfig::default() };
        let (engine, _thread) = EngineService::spawn(model, cfg)?;
        Ok(Served {
            engine,
            tok,
            name: a.name.clone().unwrap_or_else(|| default_name(&a.model)),
            context: loaded.config.max_position_embeddings,
            default_max_tokens: a.max_tokens,
            created: unix_now(),
        })
    }

    fn model_object(&self) -> Value {
        json!({"id": self.name, "object": "model", "created": self.created, "owned_by": "mappa"})
    }

    /// A request's `model`: absent, or the served name.
    fn check_model(&self, id: &str) -> Result<(), ApiError> {
        if id == self.name {
            return Ok(());
        }
        let message = format!("The model `{id}` does not exist; this server serves `{}`", self.name);
        Err(ApiError::new(404, "invalid_request_error", "model_not_found", message))
    }

    /// Parses and validates a chat-completions body.
    fn job(&self, body: &[u8]) -> Result<Job, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {e}")))?;
        let req: ChatRequest = serde_json::from_value(value)
            .map_err(|e| ApiError::invalid("invalid_request", format!("invalid chat completion request: {e}")))?;
        if let Some(id) = &req.model {
            self.check_model(id)?;
        }
        if req.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("invalid_value", "n must be 1: this server returns one choice"));
        }
        if req.top_logprobs.is_some_and(|k| k > 0) {
            return Err(ApiError::invalid("unsupported", "top_logprobs is not supported (logprobs is)"));
        }
        let params = sampling(&req)?;
        let messages = chat_messages(req.messages)?;
        let prompt = self.tok.encode_chat(&messages).map_err(|e| {
            ApiError::invalid("invalid_messages", format!("the chat template cannot render these messages: {e:#}"))
        })?;
        let budget = self.budget(prompt.len(), req.max_completion_tokens.or(req.max_tokens))?;
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

    /// Completion tokens allowed: the request's maximum (else the server's), capped by the room the prompt
    /// leaves in the context.
    fn budget(&self, prompt_len: usize, requested: Option<u64>) -> Result<usize, ApiError> {
        let context = self.context;
        if prompt_len >= context {
            let message = format!(
                "the prompt is {prompt_len} tokens; this model's context is {context} tokens, so a prompt may have \
                 at most {}",
                context.saturating_sub(1)
            );
            return Err(ApiError::invalid("context_length_exceeded", message));
        }
        let max = match requested {
            None => self.default_max_tokens,
            Some(n) if n == 0 || n > context as u64 => {
                let message =
                    format!("max_tokens must be between 1 and the model's context length ({context}), got {n}");
                return Err(ApiError::invalid("invalid_value", message));
            }
            Some(n) => n as usize,
        };
        Ok(max.min(self.context - prompt_len))
    }

    /// Runs `job`, handing `emit` each piece of text as soon as it is settled.
    fn complete(&self, job: &Job, mut emit: impl FnMut(&str) -> Result<()>) -> Result<Outcome> {
        let mut text = Text::new(&self.tok, &job.stops);
        let req = crate::engine::Request {
            prompt: job.prompt.clone(),
            max_new_tokens: job.budget,
            stop_ids: self.tok.stop_ids().to_vec(),
            samples: vec![job.params],
        };
        let updates = self.engine.submit(req)?.pop().expect("one receiver per sample");
        let mut logprobs = Vec::new();
        let mut finish = FinishReason::Length;
        // Leaving this loop early drops `updates`, which aborts the sequence in the engine.
        for update in updates.iter() {
            match update {
                Update::Token { id, logprob } => {
                    logprobs.push(logprob);
                    let piece = text.push(id)?;
                    if !piece.is_empty() {
                        emit(&piece)?;
                    }
                    if text.stopped {
                        break;
                    }
                }
                Update::Done(g) => {
                    finish = g.finish;
                    break;
                }
                Update::Failed(e) => bail!("{e}"),
            }
        }
        drop(updates);
        let rest = text.finish();
        if !rest.is_empty() {
            emit(&rest)?;
        }
        let stopped = text.stopped || finish == FinishReason::Stop;
        Ok(Outcome {
            finish: if stopped { "stop" } else { "length" },
            completion_tokens: text.generated,
            logprobs: job.logprobs.then(|| text.ids.iter().copied().zip(logprobs).collect()),
            text: text.text,
        })
    }

    /// A non-streamed answer: a `chat.completion` object.
    fn completion(&self, job: &Job) -> Result<Value, ApiError> {
        let out = self.complete(job, |_| Ok(())).map_err(|e| ApiError::generation(&e))?;
        let logprobs = self.logprobs_json(&out).map_err(|e| ApiError::generation(&e))?;
        Ok(json!({
            "id": completion_id(),
            "object": "chat.completion",
            "created": unix_now(),
            "model": self.name,
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
    fn logprobs_json(&self, out: &Outcome) -> Result<Value> {
        let Some(pairs) = &out.logprobs else { return Ok(Value::Null) };
        let content = pairs
            .iter()
            .map(|&(id, logprob)| {
                let token = self.tok.decode(&[id], false)?;
                Ok(json!({"token": token, "logprob": logprob, "bytes": token.as_bytes(), "top_logprobs": []}))
            })
            .collect::<Result<Vec<Value>>>()?;
        Ok(json!({ "content": content }))
    }
}

/// A directory's name, or a file's name without its extension.
fn default_name(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map_or_else(|| "mappa".into(), |n| n.to_string_lossy().into_owned())
}

/// The fields of a chat-completions request that this server reads; others (penalties, `user`, ...) are ignored.
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

/// OpenAI's defaults: temperature 1 and no nucleus cut; a random seed unless one is given.
fn sampling(req: &ChatRequest) -> Result<SamplingParams, ApiError> {
    let top_k = match req.top_k {
        None | Some(-1) => 0,
        Some(k) => usize::try_from(k).map_err(|_| {
            ApiError::invalid("invalid_value", format!("top_k must be -1 or 0 (no cut) or positive, got {k}"))
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
        return Err(ApiError::invalid("invalid_value", "messages must not be empty"));
    }
    messages
        .into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        "invalid_value",
                        format!("unsupported message role {other:?}: use system, user or assistant"),
                    ))
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
                        )),
                    })
                    .collect::<Result<Vec<String>, ApiError>>()?
                    .join("\n"),
            };
            Ok(ChatMessage::new(role, &content))
        })
        .collect()
}

/// A validated chat-completions request.
struct Job {
    prompt: Vec<u32>,
    budget: usize,
    params: SamplingParams,
    stops: Vec<String>,
    logprobs: bool,
    stream: bool,
    include_usage: bool,
}

/// A finished completion.
struct Outcome {
    text: String,
    finish: &'static str,
    /// Tokens generated up to the end of the text, the stop token included.
    completion_tokens: usize,
    /// The content's tokens with their log-probabilities, when asked for.
    logprobs: Option<Vec<(u32, f32)>>,
}

fn usage(job: &Job, out: &Outcome) -> Value {
    let (prompt, completion) = (job.prompt.len(), out.completion_tokens);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A completion's text as its tokens arrive: decoded, cut before the first stop string, and handed out as
/// soon as it is settled. The tail that may still change is held back: an incomplete UTF-8 character (shown
/// as U+FFFD until its last byte comes) or the start of a stop string.
struct Text<'a> {
    tok: &'a Tokenizer,
    stops: &'a [String],
    /// The content's tokens: those generated before the stop token or up to the stop string's end.
    ids: Vec<u32>,
    /// Tokens generated up to the end of the text, the stop token included.
    generated: usize,
    text: String,
    /// Bytes of `text` handed out.
    sent: usize,
    /// A stop string ended the text; later tokens are ignored.
    stopped: bool,
}

impl<'a> Text<'a> {
    fn new(tok: &'a Tokenizer, stops: &'a [String]) -> Text<'a> {
        Text { tok, stops, ids: Vec::new(), generated: 0, text: String::new(), sent: 0, stopped: false }
    }

    /// Adds a generated token; returns the text it settled.
    fn push(&mut self, id: u32) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.generated += 1;
        if self.tok.stop_ids().contains(&id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        self.text = self.tok.decode(&self.ids, true)?;
        if let Some(at) = self.stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(at);
            self.stopped = true;
            return Ok(self.take(at));
        }
        let partial_stop = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter_map(|k| s.get(..k)).filter(|p| self.text.ends_with(p)).map(str::len))
            .max()
            .unwrap_or(0);
        let partial_char = self.text.len() - self.text.trim_end_matches('\u{FFFD}').len();
        Ok(self.take(self.text.len() - partial_stop.max(partial_char)))
    }

    /// The rest of the text, once generation is over.
    fn finish(&mut self) -> String {
        self.take(self.text.len())
    }

    /// The text from what was handed out up to byte `end` (nothing if that is not a settled piece).
    fn take(&mut self, end: usize) -> String {
        match self.text.get(self.sent..end) {
            Some(piece) => {
                self.sent = end;
                piece.to_owned()
            }
            None => String::new(),
        }
    }
}

/// An OpenAI-style error.
#[derive(Debug)]
struct ApiError {
    status: u16,
    kind: &'static str,
    code: &'static str,
    message: String,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, code, message: message.into(), allow: None }
    }

    fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_request_error", code, message)
    }

    fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> ApiError {
        let message = format!("{method} is not allowed on {path}; use {allow}");
        ApiError { allow: Some(allow), ..ApiError::new(405, "invalid_request_error", "method_not_allowed", message) }
    }

    fn generation(e: &anyhow::Error) -> ApiError {
        ApiError::new(500, "server_error", "generation_failed", format!("generation failed: {e:#}"))
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code, "param": null}})
    }

    fn response(&self) -> Response<Cursor<Vec<u8>>> {
        let response = json_response(self.status, &self.body());
        match self.allow {
            Some(allow) => response.with_header(header("Allow", allow)),
            None => response,
        }
    }
}

/// What a request gets when it is valid.
enum Reply {
    Json(Value),
    Stream(Job),
}

/// Answers one request. Failing to deliver the answer (a client that went away) is only logged.
fn handle(engine: &Served, mut rq: Request) {
    let what = format!("{} {}", rq.method(), rq.url());
    let delivered = match route(engine, &mut rq) {
        Ok(Reply::Json(body)) => rq.respond(json_response(200, &body)).map_err(anyhow::Error::from),
        Ok(Reply::Stream(job)) => stream(engine, rq, &job),
        Err(e) => {
            if e.status >= 500 {
                eprintln!("mappa serve: {what}: {}", e.message);
            }
            rq.respond(e.response()).map_err(anyhow::Error::from)
        }
    };
    if let Err(e) = delivered {
        eprintln!("mappa serve: {what}: {e:#}");
    }
}

fn route(engine: &Served, rq: &mut Request) -> Result<Reply, ApiError> {
    let url = rq.url().to_owned();
    let path = url.split('?').next().unwrap_or_default().trim_end_matches('/');
    let method = rq.method().clone();
    let (get, post) = (method == Method::Get, method == Method::Post);
    match path {
        "/v1/models" if get => Ok(Reply::Json(json!({"object": "list", "data": [engine.model_object()]}))),
        "/v1/models" => Err(ApiError::method_not_allowed(&method, path, "GET")),
        "/v1/chat/completions" if post => {
            let job = engine.job(&read_body(rq)?)?;
            if !job.stream {
                return engine.completion(&job).map(Reply::Json);
            }
            match *rq.http_version() >= HTTPVersion(1, 1) {
                true => Ok(Reply::Stream(job)),
                false => Err(ApiError::invalid("unsupported", "streaming needs HTTP/1.1 (chunked transfer encoding)")),
            }
        }
        "/v1/chat/completions" => Err(ApiError::method_not_allowed(&method, path, "POST")),
        _ => match path.strip_prefix("/v1/models/") {
            Some(id) if get => engine.check_model(id).map(|()| Reply::Json(engine.model_object())),
            Some(_) => Err(ApiError::method_not_allowed(&method, path, "GET")),
            None => {
                Err(ApiError::new(404, "invalid_request_error", "unknown_url", format!("Invalid URL ({method} {url})")))
            }
        },
    }
}

fn read_body(rq: &mut Request) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    rq.as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::invalid("invalid_body", format!("cannot read the request body: {e}")))?;
    if body.len() as u64 > MAX_BODY {
        let message = format!("the request body is larger than {MAX_BODY} bytes");
        return Err(ApiError::new(413, "invalid_request_error", "body_too_large", message));
    }
    Ok(body)
}

/// Answers a `stream: true` request with Server-Sent Events: a chunk with the role, one per piece of text as
/// it is generated, one with the finish reason (and the log-probs, which exist only once generation is over),
/// the usage when asked for, then `[DONE]`. A failure after the headers went out becomes an error event.
fn stream(engine: &Served, rq: Request, job: &Job) -> Result<()> {
    let mut events = EventStream::open(rq)?;
    let head =
        json!({"id": completion_id(), "object": "chat.completion.chunk", "created": unix_now(), "model": engine.name});
    let chunk = |delta: Value, logprobs: Value, finish: Value| {
        let mut c = head.clone();
        c["choices"] = json!([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]);
        c
    };
    events.send(&chunk(json!({"role": "assistant", "content": ""}), Value::Null, Value::Null))?;
    let result = engine
        .complete(job, |piece| Ok(events.send(&chunk(json!({ "content": piece }), Value::Null, Value::Null))?))
        .and_then(|out| Ok((engine.logprobs_json(&out)?, out)));
    let (logprobs, out) = match result {
        Ok(done) => done,
        Err(e) => {
            // The connection may be what failed: the error itself is what gets logged.
            let _ = events.send(&ApiError::generation(&e).body());
            return Err(e.context("streaming a completion"));
        }
    };
    events.send(&chunk(json!({}), logprobs, out.finish.into()))?;
    if job.include_usage {
        let mut last = head.clone();
        last["choices"] = json!([]);
        last["usage"] = usage(job, &out);
        events.send(&last)?;
    }
    events.finish()
}

/// A Server-Sent Events response written straight to the connection, each event flushed in its own chunk of
/// HTTP/1.1 chunked transfer encoding.
struct EventStream {
    out: Box<dyn Write + Send>,
}

impl EventStream {
    fn open(rq: Request) -> std::io::Result<EventStream> {
        let mut out = rq.into_writer();
        out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )?;
        out.flush()?;
        Ok(EventStream { out })
    }

    fn send(&mut self, data: &Value) -> std::io::Result<()> {
        self.event(&data.to_string())
    }

    /// `data: {data}` in one chunk, flushed.
    fn event(&mut self, data: &str) -> std::io::Result<()> {
        let event = format!("data: {data}\n\n");
        write!(self.out, "{:x}\r\n{event}\r\n", event.len())?;
        self.out.flush()
    }

    /// Sends `[DONE]` and the last, empty chunk.
    fn finish(mut self) -> Result<()> {
        self.event("[DONE]")?;
        self.out.write_all(b"0\r\n\r\n")?;
        Ok(self.out.flush()?)
    }
}

fn json_response(status: u16, body: &Value) -> Response<Cursor<Vec<u8>>> {
    Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

/// A header from this file's constants, which are ASCII.
fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name, value).expect("header names and values here are ASCII")
}

fn completion_id() -> String {
    format!("chatcmpl-{:016x}", rand::random::<u64>())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
