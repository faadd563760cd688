//! What `/v1/chat/completions` and `/v1/completions` share: the request fields both take ([`Common`],
//! flattened into each endpoint's request), their validation with OpenAI's ranges, and the validated
//! [`Job`] both hand to the one generation path (`completion`, `stream`).
use super::completion::Outcome;
use super::error::ApiError;
use super::Served;
use crate::constrain::Grammar;
use crate::sample::{SamplingParams, MAX_TOP_LOGPROBS};
use serde::Deserialize;
use serde_json::{json, Value};

/// The fields both endpoints take. Fields this server does not read (`user`, `metadata`, ...) are ignored;
/// those it does not implement are refused unless neutral ([`Common::job`]).
#[derive(Deserialize)]
pub struct Common {
    pub model: Option<String>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// vLLM's extension; -1 or 0 means no cut.
    top_k: Option<i64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<serde_json::Map<String, Value>>,
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

/// Which endpoint a job answers, and so the shape of its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `chat.completion`: a message per choice, `logprobs.content` entries.
    Chat,
    /// `text_completion`: a text per choice, OpenAI's legacy `logprobs` lists.
    Text,
}

/// One prompt of a job: its tokens and its completion token budget.
pub struct Prompt {
    pub ids: Vec<u32>,
    pub budget: usize,
}

/// A validated request of either endpoint. Its choices are prompt-major: choice `p * n + j` is prompt p's
/// j-th sample, drawn with seed + j.
pub struct Job {
    pub api: Api,
    pub prompts: Vec<Prompt>,
    pub n: usize,
    /// Its `top_logprobs` is the alternatives each token comes with.
    pub params: SamplingParams,
    pub stops: Vec<String>,
    /// Log-probs were asked for.
    pub logprobs: bool,
    /// The prompt is echoed before each choice's text (completions only).
    pub echo: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// The grammar every choice's output follows (`response_format`, a forced tool call), if any.
    pub grammar: Option<Grammar>,
    /// The output is parsed for tool calls (chat with `tools`).
    pub tool_calls: bool,
}

/// OpenAI's bounds.
pub const MAX_N: u64 = 128;
const MAX_STOPS: usize = 4;
const MAX_TEMPERATURE: f32 = 2.0;

/// Parses a JSON body into an endpoint's request type, with OpenAI-style errors.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| ApiError::invalid("invalid_request", format!("invalid {what}: {e}")))
}

/// Refuses a field this server does not implement, naming it.
pub fn unsupported(param: &'static str, what: &str) -> ApiError {
    ApiError::invalid("unsupported", format!("{param} is not supported by this server ({what})")).param(param)
}

/// A bad value of `param`.
pub fn invalid(param: &'static str, message: String) -> ApiError {
    ApiError::invalid("invalid_value", message).param(param)
}

/// The number of alternatives asked for through `param`: at most [`MAX_TOP_LOGPROBS`].
pub fn top_logprobs(param: &'static str, k: Option<u64>) -> Result<usize, ApiError> {
    match k.unwrap_or(0) {
        k if k > MAX_TOP_LOGPROBS as u64 => {
            Err(invalid(param, format!("{param} must be in [0, {MAX_TOP_LOGPROBS}], got {k}")))
        }
        k => Ok(k as usize),
    }
}

impl Common {
    /// `n`, 1 when absent (validated by [`Common::job`]).
    pub fn n_or_default(&self) -> u64 {
        self.n.unwrap_or(1)
    }

    /// The shared part of a job, validated: everything but the prompts, `logprobs` and `echo`, which the
    /// endpoint fills in. `top_logprobs` is the alternatives each token comes with.
    pub fn job(self, served: &Served, api: Api, top_logprobs: usize) -> Result<Job, ApiError> {
        if let Some(id) = &self.model {
            served.check_model(id).map_err(|e| e.param("model"))?;
        }
        for (param, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if value.is_some_and(|v| v != 0.0) {
                return Err(unsupported(param, "only 0 is accepted"));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(unsupported("logit_bias", "only an empty map is accepted"));
        }
        let n = self.n.unwrap_or(1);
        if !(1..=served.max_n).contains(&n) {
            let why = if served.max_n < MAX_N { " (this server runs that many sequences at once)" } else { "" };
            return Err(invalid("n", format!("n must be in [1, {}], got {n}{why}", served.max_n)));
        }
        let params = self.sampling(top_logprobs)?;
        let stops = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stops.len() > MAX_STOPS {
            return Err(invalid("stop", format!("stop may hold at most {MAX_STOPS} sequences, got {}", stops.len())));
        }
        Ok(Job {
            api,
            prompts: Vec::new(),
            n: n as usize,
            params,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            logprobs: false,
            echo: false,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            grammar: None,
            tool_calls: false,
        })
    }

    /// OpenAI's defaults: temperature 1 and no nucleus cut; a random seed unless one is given. `top_p = 0`
    /// keeps only the most likely token, as it does at OpenAI.
    fn sampling(&self, top_logprobs: usize) -> Result<SamplingParams, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=MAX_TEMPERATURE).contains(&temperature) {
            let message = format!("temperature must be in [0, {MAX_TEMPERATURE}], got {temperature}");
            return Err(invalid("temperature", message));
        }
        let top_k = match self.top_k {
            None | Some(-1) => 0,
            Some(k) => usize::try_from(k)
                .map_err(|_| invalid("top_k", format!("top_k must be -1 or 0 (no cut) or positive, got {k}")))?,
        };
        let (top_k, top_p) = match self.top_p.unwrap_or(1.0) {
            0.0 => (1, 1.0),
            p => (top_k, p),
        };
        let seed = self.seed.map_or_else(rand::random, |s| s as u64);
        let params = SamplingParams { temperature, top_k, top_p, seed, top_logprobs };
        params.validate().map_err(|e| ApiError::invalid("invalid_value", e.to_string()))?;
        Ok(params)
    }
}

impl Job {
    /// Adds a prompt with its token budget (`Served::budget`).
    pub fn add_prompt(&mut self, served: &Served, ids: Vec<u32>, max_tokens: Option<u64>) -> Result<(), ApiError> {
        let budget = served.budget(ids.len(), max_tokens, self.api)?;
        self.prompts.push(Prompt { ids, budget });
        Ok(())
    }

    /// Each prompt counts once, however many choices share it.
    pub fn usage(&self, outs: &[Outcome]) -> Value {
        let prompt: usize = self.prompts.iter().map(|p| p.ids.len()).sum();
        let completion: usize = outs.iter().map(|o| o.completion_tokens).sum();
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    pub fn choices(&self) -> usize {
        self.prompts.len() * self.n
    }

    /// The temperature log-probs are reported under: the sampling temperature, 1 when greedy (as
    /// `crate::sample`).
    pub fn logprob_temperature(&self) -> f32 {
        if self.params.temperature > 0.0 {
            self.params.temperature
        } else {
            1.0
        }
    }
}
