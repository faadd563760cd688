//! `mappa serve`: an OpenAI-compatible HTTP server for one model (a Hugging Face directory, e.g. a training
//! checkpoint, or a .gguf file). Any OpenAI client, our own [`crate::coach::HttpCoach`] included, can then
//! chat with a model or a checkpoint: to try it, to use it as a coach, to evaluate it.
//!
//! Endpoints: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (text messages, and
//! `tool` messages and assistant `tool_calls`; `temperature` (0-2), `top_p`, `top_k`, `seed`,
//! `max_tokens`/`max_completion_tokens`, `stop` (up to 4), `n` (up to 128, sharing the prompt's prefill),
//! `logprobs` (with each token's exact bytes) and `top_logprobs` (0-20 alternatives per token), `stream`,
//! `stream_options.include_usage`; `tools` with `tool_choice` none/auto/required/a named function, for
//! models whose chat template writes Hermes/Qwen `<tool_call>` markup (`tools`); `response_format` text,
//! `json_object` or `json_schema`, enforced by a grammar; penalties and `logit_bias` are refused with a 400
//! unless neutral), `POST /v1/completions`
//! (the legacy text endpoint evaluation harnesses use: a string, strings, token ids or lists of them as the
//! prompt, `echo` with the prompt's log-probs, `logprobs: k` alternatives in OpenAI's legacy shape,
//! `max_tokens` (default 16, and 0 to only score), the same sampling fields, `n`, `stop` and streaming),
//! `GET /health` and `GET /metrics` (Prometheus text). Errors are OpenAI's JSON (`{"error": {"message",
//! "type", "code", "param"}}`), naming the field at fault.
//!
//! Log-probs are those of the distribution each token is drawn from, softmax(logits / T) with T = 1 when
//! greedy (`crate::sample`): the model's raw log-softmax at OpenAI's default T = 1 and when greedy, the
//! tempered one otherwise; a token's alternatives come from that same distribution, so its log-prob is
//! exactly its own entry's among them. An echoed prompt is scored at the same T. They are streamed with the
//! text they belong to, each token's bytes exactly its part of the returned text. A constrained choice
//! (`response_format`, a forced tool call) draws from the distribution its grammar's mask leaves
//! (`crate::sample::sample_masked`), and its log-probs and alternatives are of that masked distribution: a
//! token the grammar forces has log-prob 0, and only tokens the grammar allowed are alternatives.
//!
//! Constrained outputs: `response_format` `json_object` or `json_schema` (its `schema`; what llguidance
//! cannot enforce is a 400, never ignored) and a forced tool call (`tool_choice` `required` or a function)
//! compile a grammar (`crate::constrain`, llguidance) whose constraint each choice carries through the
//! engine; its mask is applied where the token is sampled, on either backend (on CUDA the constrained row's
//! logits are sampled on the host), and unconstrained requests in the same batch are unaffected. An output
//! ends with a stop token once the grammar is complete; JSON may hold at most
//! [`crate::constrain::JSON_MAX_WHITESPACE`] whitespace characters between two tokens. An output cut by
//! `max_tokens` is `length` and may be incomplete.
//!
//! - `http`: hyper on a small tokio runtime, with a bounded number of connections and a timeout on every
//!   stage a client controls (headers, idle keep-alive, the body, each write), so slow or stalled clients
//!   cannot take the server. A handler whose client goes away is dropped, and with it the generation.
//! - Every request is submitted to one engine thread ([`EngineService`]), so concurrent requests decode
//!   together in one continuous batch; decoding is the engine's, the same as in rollouts. Scoring an echoed
//!   prompt runs there too, one forward pass between two steps.
//! - `request`: the fields both endpoints share, validated into one job; `chat` and `completions`: each
//!   endpoint's own fields and response; `completion`: one choice's text as it is generated, cut at stop
//!   strings, with its tokens' log-probs; `logprobs`: tokens placed in their text, in both of OpenAI's
//!   shapes; `stream`: Server-Sent Events for both; `error`: OpenAI's error objects; `metrics`: the counters;
//!   `tools`: `tools`/`tool_choice` validation, the tool-call format read from the chat template, the
//!   markup parser and the forced-call grammar.
//! - The token budget is `max_tokens` (else `--max-tokens` for chat, 16 for completions), capped by the room
//!   the prompt leaves in the model's context; a prompt that leaves no room is a 400.
//! - On the CUDA backend, `top_logprobs` are computed on the host from the row's logits; prompt log-probs
//!   (`echo` with `logprobs`) are not supported there yet and are refused with a 400 naming `echo`.
mod chat;
mod completion;
mod completions;
mod error;
mod http;
mod logprobs;
mod metrics;
mod request;
mod stream;
mod tools;

use crate::constrain::Grammars;
use crate::engine::{EngineConfig, EngineService};
use crate::model::{Backend, BackendChoice};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};
use error::ApiError;
use request::Api;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

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
    /// The model id that /v1/models reports and requests may name (`--served-model-name` too, as in vLLM)
    /// [default: the model's directory name or file stem].
    #[arg(long, alias = "served-model-name")]
    pub name: Option<String>,
    /// Completion token budget of chat requests that set none (`/v1/completions` defaults to 16, as
    /// OpenAI's).
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Connections open at once; further ones wait in the listen queue until one closes.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers (or stay idle between requests), to send its
    /// body, and to take each piece of the response.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// auto: CUDA when it can run here, else the CPU.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub device: BackendChoice,
    /// On a GPU, the fraction of the device memory free after loading that the KV pool takes.
    #[arg(long, default_value_t = EngineConfig::default().kv_fraction)]
    pub kv_fraction: f32,
}

/// Bounds of the server's flags.
const MAX_CONNECTIONS: usize = 65536;
const MAX_TIMEOUT_S: f64 = 86400.0;

pub fn run(a: ServeArgs) -> Result<()> {
    ensure!(a.max_tokens > 0, "--max-tokens must be at least 1");
    ensure!(
        (1..=MAX_CONNECTIONS).contains(&a.max_connections),
        "--max-connections must be in [1, {MAX_CONNECTIONS}], got {}",
        a.max_connections
    );
    ensure!(
        a.timeout >= 0.1 && a.timeout <= MAX_TIMEOUT_S,
        "--timeout must be in [0.1, {MAX_TIMEOUT_S}] seconds, got {}",
        a.timeout
    );
    ensure!(a.kv_fraction > 0.0 && a.kv_fraction <= 0.95, "--kv-fraction must be in (0, 0.95], got {}", a.kv_fraction);
    let served = Served::load(&a)?;
    let limits = http::Limits { max_connections: a.max_connections, timeout: Duration::from_secs_f64(a.timeout) };
    // The engine thread does the heavy work; the runtime only parses, tokenizes and writes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("serve")
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(http::serve(served, &a.host, a.port, limits))
}

/// What the handlers share, read-only.
struct Served {
    engine: EngineService,
    /// The engine thread: finished only if it failed.
    engine_thread: JoinHandle<()>,
    tok: Tokenizer,
    name: String,
    /// The backend the model runs on (some features are not on every backend yet).
    backend: Backend,
    /// The model's vocabulary size: token ids in prompts must be below it.
    vocab: usize,
    /// The model's context length (`max_position_embeddings`): prompt and completion together.
    context: usize,
    /// The most choices (`n`) one request may ask for: OpenAI's bound, or fewer where the engine runs fewer
    /// sequences at once (a request's samples run together).
    max_n: u64,
    default_max_tokens: usize,
    /// Unix seconds at startup: the model's `created`.
    created: u64,
    metrics: metrics::Counters,
    /// The grammar compiler for constrained outputs, or why there is none.
    grammars: Result<Grammars, String>,
    /// The tool-call markup of the model's chat template, or why tools cannot be served.
    tool_format: Result<tools::ToolFormat, String>,
}

impl Served {
    fn load(a: &ServeArgs) -> Result<Served> {
        let backend = crate::model::resolve_and_report(a.device, crate::model::Work::Inference, "mappa serve")?;
        let loaded = crate::loader::load(&a.model)?;
        let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config)?;
        let grammars = Grammars::new(&tok, loaded.config.vocab_size).map_err(|e| format!("{e:#}"));
        if let Err(e) = &grammars {
            eprintln!("mappa serve: constrained outputs (response_format, forced tool calls) are off: {e}");
        }
        let tool_format = tools::ToolFormat::of(tok.chat_template());
        let model = crate::model::load(&loaded, backend)
            .with_context(|| format!("building the {backend} model from {}", a.model.display()))?;
        let cfg = EngineConfig { kv_fraction: a.kv_fraction, ..EngineConfig::default() };
        let (engine, engine_thread) = EngineService::spawn(model, cfg)?;
        Ok(Served {
            engine,
            engine_thread,
            tok,
            name: a.name.clone().unwrap_or_else(|| default_name(&a.model)),
            backend,
            vocab: loaded.config.vocab_size,
            context: loaded.config.max_position_embeddings,
            max_n: request::MAX_N.min(cfg.max_seqs as u64),
            default_max_tokens: a.max_tokens,
            created: unix_now(),
            metrics: metrics::Counters::default(),
            grammars,
            tool_format,
        })
    }

    /// The grammar compiler, or a 400 saying why constrained outputs are off.
    fn grammars(&self) -> Result<&Grammars, ApiError> {
        self.grammars.as_ref().map_err(|e| {
            ApiError::invalid("unsupported", format!("constrained outputs are not available for this model: {e}"))
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

    /// Completion tokens allowed: the request's maximum (else the server's), capped by the room the prompt
    /// leaves in the context. Chat needs at least one; a text completion may ask for none (`echo` to score).
    fn budget(&self, prompt_len: usize, requested: Option<u64>, api: Api) -> Result<usize, ApiError> {
        let context = self.context;
        if prompt_len >= context {
            let message = format!(
                "the prompt is {prompt_len} tokens; this model's context is {context} tokens, so a prompt may have \
                 at most {}",
                context.saturating_sub(1)
            );
            let param = if api == Api::Chat { "messages" } else { "prompt" };
            return Err(ApiError::invalid("context_length_exceeded", message).param(param));
        }
        let least = u64::from(api == Api::Chat);
        let max = match requested {
            None => self.default_max_tokens,
            Some(n) if n < least || n > context as u64 => {
                let message =
                    format!("max_tokens must be between {least} and the model's context length ({context}), got {n}");
                return Err(ApiError::invalid("invalid_value", message).param("max_tokens"));
            }
            Some(n) => n as usize,
        };
        Ok(max.min(self.context - prompt_len))
    }
}

/// A directory's name, or a file's name without its extension.
fn default_name(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map_or_else(|| "mappa".into(), |n| n.to_string_lossy().into_owned())
}

fn completion_id(api: Api) -> String {
    let prefix = if api == Api::Chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
