//! A coach behind an OpenAI-compatible chat-completions API (Gemini, OpenAI, vLLM, llama.cpp servers).
//!
//! `POST {base_url}/chat/completions` with `{model, messages, temperature: 0}`; the reply is
//! `choices[0].message.content`. Failures are split in two:
//! - retryable: 429, 5xx, transport errors and timeouts. Retried up to `max_retries` times with
//!   exponential backoff and jitter, or after the server's `Retry-After` seconds (capped);
//! - final: other statuses (a 400 will not fix itself) and malformed 200 bodies; the error carries the
//!   status and the start of the body.
//!
//! A counting semaphore shared by all threads caps the requests in flight; it is held for one HTTP
//! attempt only, not while sleeping before a retry.
use super::{lock, CoachBackend};
use crate::tokenizer::ChatMessage;
use anyhow::{anyhow, bail, ensure, Context, Result};
use rand::Rng;
use serde_json::{json, Value};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Characters of a response body quoted in errors.
const BODY_EXCERPT: usize = 500;

/// Limit of the start-up probe's one request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct HttpCoachConfig {
    /// API root, e.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable holding the API key; `None` sends no `Authorization` header.
    pub api_key_env: Option<String>,
    /// Limit for one HTTP attempt, body included.
    pub timeout: Duration,
    /// Retries after the first attempt, for retryable failures.
    pub max_retries: u32,
    /// Backoff before retry k (from 0) is `backoff_base * 2^k`, capped at `backoff_max`, times a
    /// random factor in [0.5, 1].
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Cap on a server's `Retry-After`.
    pub retry_after_max: Duration,
    /// Requests in flight at once, across all threads.
    pub max_in_flight: usize,
}

impl Default for HttpCoachConfig {
    /// The paper's default coach, `gemini-2.5-flash`, through Google's OpenAI-compatible endpoint.
    fn default() -> HttpCoachConfig {
        HttpCoachConfig {
            base_url: "https://generativelanguage.googleapis.com/v1beta/openai".into(),
            model: "gemini-2.5-flash".into(),
            api_key_env: Some("GEMINI_API_KEY".into()),
            timeout: Duration::from_secs(300),
            max_retries: 8,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(120),
            retry_after_max: Duration::from_secs(300),
            max_in_flight: 16,
        }
    }
}

pub struct HttpCoach {
    agent: ureq::Agent,
    url: String,
    /// `GET {base_url}/models`, asked once at start-up.
    models_url: String,
    model: String,
    /// The `Authorization` header value; never printed.
    auth: Option<String>,
    cfg: HttpCoachConfig,
    slots: Semaphore,
}

/// How one HTTP attempt failed.
enum Failure {
    Retryable { error: anyhow::Error, retry_after: Option<Duration> },
    Final(anyhow::Error),
}

impl HttpCoach {
    /// Fails if the configured key variable is unset or empty (naming it), or the limits are zero.
    pub fn new(cfg: HttpCoachConfig) -> Result<HttpCoach> {
        ensure!(cfg.max_in_flight > 0, "coach max_in_flight must be at least 1");
        ensure!(!cfg.timeout.is_zero(), "coach timeout must be positive");
        let auth = match &cfg.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.trim().is_empty() => Some(format!("Bearer {}", key.trim())),
                _ => bail!("coach API key: environment variable {var} is not set (or empty)"),
            },
            None => None,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(HttpCoach {
            agent,
            url: format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')),
            models_url: format!("{}/models", cfg.base_url.trim_end_matches('/')),
            model: cfg.model.clone(),
            auth,
            slots: Semaphore::new(cfg.max_in_flight),
            cfg,
        })
    }

    /// One HTTP attempt, holding a concurrency slot.
    fn attempt(&self, body: &Value) -> Result<String, Failure> {
        let _slot = self.slots.acquire();
        let mut request = self.agent.post(&self.url);
        if let Some(auth) = &self.auth {
            request = request.header("Authorization", auth);
        }
        let mut response = request.send_json(body).map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s).min(self.cfg.retry_after_max));
        let text = response.body_mut().read_to_string().map_err(transport)?;
        match status {
            200..=299 => reply_content(&text).map_err(Failure::Final),
            429 | 500..=599 => {
                Err(Failure::Retryable { error: anyhow!("HTTP {status}: {}", excerpt(&text)), retry_after })
            }
            _ => Err(Failure::Final(anyhow!("HTTP {status} from {} (not retried): {}", self.url, excerpt(&text)))),
        }
    }

    /// The pause before retry number `retry` (from 0).
    fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or_else(|| {
            let exp = self.cfg.backoff_base.saturating_mul(2u32.saturating_pow(retry)).min(self.cfg.backoff_max);
            exp.mul_f64(rand::rng().random_range(0.5..=1.0))
        })
    }
}

impl CoachBackend for HttpCoach {
    /// `GET {base_url}/models`: no answer at all (refused, unresolvable, timed out) or an API key refused
    /// (401, 403) fails; any other answer means a server is there. A model list without the configured model
    /// is said on stderr, not refused: some providers list their models under other names.
    fn probe(&self) -> Result<()> {
        let mut request = self.agent.get(&self.models_url).config().timeout_global(Some(PROBE_TIMEOUT)).build();
        if let Some(auth) = &self.auth {
            request = request.header("Authorization", auth);
        }
        let mut response =
            request.call().with_context(|| format!("the coach endpoint {} does not answer", self.cfg.base_url))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        ensure!(
            !matches!(status, 401 | 403),
            "the coach endpoint {} refused the API key{} (HTTP {status}): {}",
            self.cfg.base_url,
            self.cfg.api_key_env.as_ref().map_or(String::new(), |v| format!(" in {v}")),
            excerpt(&text)
        );
        let listed = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
            let ids = v["data"].as_array()?.iter().filter_map(|m| m["id"].as_str().map(str::to_string));
            Some(ids.collect::<Vec<_>>())
        });
        if let Some(ids) = listed.filter(|ids| !ids.iter().any(|id| id.trim_start_matches("models/") == self.model)) {
            eprintln!(
                "warning: the coach endpoint {} does not list the model `{}` (it lists {} models, e.g. {:?})",
                self.cfg.base_url,
                self.model,
                ids.len(),
                ids.iter().take(3).collect::<Vec<_>>()
            );
        }
        Ok(())
    }

    fn complete(&self, messages: &[ChatMessage]) -> Result<String> {
        let body = json!({ "model": self.model, "messages": messages, "temperature": 0 });
        let mut retry = 0;
        loop {
            match self.attempt(&body) {
                Ok(reply) => return Ok(reply),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retryable { error, .. }) if retry == self.cfg.max_retries => {
                    return Err(error.context(format!("coach request failed after {} attempts", retry + 1)));
                }
                Err(Failure::Retryable { retry_after, .. }) => std::thread::sleep(self.delay(retry, retry_after)),
            }
            retry += 1;
        }
    }
}

/// Classifies a ureq error: network trouble and timeouts are worth retrying, the rest is not.
fn transport(e: ureq::Error) -> Failure {
    use ureq::Error as E;
    let retryable = matches!(e, E::Io(_) | E::Timeout(_) | E::ConnectionFailed | E::HostNotFound | E::Protocol(_));
    let error = anyhow!(e).context("coach request transport");
    if retryable {
        Failure::Retryable { error, retry_after: None }
    } else {
        Failure::Final(error)
    }
}

/// `choices[0].message.content` of a chat-completions response body.
fn reply_content(body: &str) -> Result<String> {
    let v: Value =
        serde_json::from_str(body).with_context(|| format!("coach response is not JSON: {}", excerpt(body)))?;
    v.pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("coach response has no choices[0].message.content: {}", excerpt(body)))
}

/// The start of a body, for error messages.
fn excerpt(body: &str) -> String {
    let mut s: String = body.chars().take(BODY_EXCERPT).collect();
    if s.len() < body.len() {
        s.push_str(" [...]");
    }
    s
}

/// A counting semaphore: at most `n` permits out at once.
struct Semaphore {
    free: Mutex<usize>,
    freed: Condvar,
}

/// A held permit; dropping it gives it back.
struct Permit<'a>(&'a Semaphore);

impl Semaphore {
    fn new(n: usize) -> Semaphore {
        Semaphore { free: Mutex::new(n), freed: Condvar::new() }
    }

    fn acquire(&self) -> Permit<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.freed.notify_one();
    }
}
