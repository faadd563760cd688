//! `stream: true`, for both endpoints: the choices as Server-Sent Events, one HTTP chunk per event as it is
//! produced: (chat) a chunk with the role per choice; one per piece of text of any choice as it is settled,
//! with the log-probs of the tokens that piece completes when asked for (an echoed prompt is a choice's
//! first piece); one per choice with its finish reason; the usage when asked for; then `[DONE]`. The
//! pieces' log-probs together are exactly the non-streamed answer's. A failure after the headers went out
//! becomes an error event. The body is pulled by hyper as the client reads: if the client goes away or
//! stops reading (the write timeout), the body is dropped, and with it every choice's generation.
//!
//! A chat job that parses tool calls sends a choice's content only up to its first `<tool_call>` (a tail
//! that may begin one is held back), then, at the end, its calls in one `tool_calls` delta and the finish
//! reason `tool_calls`, or, if the markup does not parse, the held text as content (`tools::ToolStream`).
//! Log-probs still come with the pieces their tokens settle, with or without content.
use super::completion::{Completion, Echo, Outcome, Piece};
use super::error::ApiError;
use super::http::{Body, Reply};
use super::logprobs::{chat_content, legacy};
use super::metrics::Held;
use super::request::{Api, Job};
use super::tools::{tool_calls_json, ToolStream};
use super::{completion_id, unix_now, Served};
use bytes::Bytes;
use futures_util::stream::{BoxStream, SelectAll};
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

/// The streamed response of `job` (with `echoes`, one per prompt or none); the engine has the request
/// before the headers go out, so a refusal there is still a plain error response.
pub fn response(served: Arc<Served>, job: Job, echoes: Vec<Echo>) -> Result<Reply, ApiError> {
    let completions = Completion::start(&served, &job, echoes).map_err(|e| ApiError::generation(&e))?;
    let object = match job.api {
        Api::Chat => "chat.completion.chunk",
        Api::Text => "text_completion",
    };
    let head = json!({"id": completion_id(job.api), "object": object, "created": unix_now(), "model": served.name});
    let mut choices = SelectAll::new();
    for (index, c) in completions.into_iter().enumerate() {
        choices.push(choice_updates(served.clone(), index, c));
    }
    let running = served.metrics.completion();
    let left = job.choices();
    let tool_streams = match job.tool_calls && job.api == Api::Chat {
        true => (0..left).map(|_| Some(ToolStream::default())).collect(),
        false => Vec::new(),
    };
    let mut events = Events {
        served,
        job,
        head,
        choices,
        left,
        outs: Vec::new(),
        queue: VecDeque::new(),
        tool_streams,
        _running: running,
    };
    if events.job.api == Api::Chat {
        for index in 0..left {
            events.push_choice(json!({"index": index, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": null, "finish_reason": null}));
        }
    }
    let frames = futures_util::stream::unfold(events, |mut ev| async move {
        let data = ev.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(data)), ev))
    });
    let body: Body = StreamBody::new(frames).boxed_unsync();
    let mut reply = hyper::Response::new(body);
    let headers = reply.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/event-stream"));
    headers.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-cache"));
    Ok(reply)
}

/// What one choice's generation produced next.
enum Update {
    Piece(usize, Piece),
    Done(usize, Outcome),
    Failed(anyhow::Error),
}

/// One choice's pieces, then its outcome (or its failure).
fn choice_updates(served: Arc<Served>, index: usize, c: Completion) -> BoxStream<'static, Update> {
    futures_util::stream::unfold(Some(c), move |state| {
        let served = served.clone();
        async move {
            let mut c = state?;
            Some(match c.next(&served.tok).await {
                Ok(Some(piece)) => (Update::Piece(index, piece), Some(c)),
                Ok(None) => (Update::Done(index, c.outcome()), None),
                Err(e) => (Update::Failed(e), None),
            })
        }
    })
    .boxed()
}

struct Events {
    served: Arc<Served>,
    job: Job,
    /// The fields every chunk shares.
    head: Value,
    /// Every choice's updates, as they come.
    choices: SelectAll<BoxStream<'static, Update>>,
    /// Choices not finished; the stream ends when none is left (or one failed).
    left: usize,
    outs: Vec<Outcome>,
    /// Events ready to send.
    queue: VecDeque<Bytes>,
    /// Per choice, when tool calls are parsed: its text held from the first `<tool_call>` on.
    tool_streams: Vec<Option<ToolStream>>,
    _running: Held,
}

impl Events {
    /// The next event, or None after `[DONE]` (or an error event).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.left == 0 {
                return None;
            }
            match self.choices.next().await {
                Some(Update::Piece(index, piece)) => self.push_piece(index, piece),
                Some(Update::Done(index, out)) => self.finish_choice(index, out),
                Some(Update::Failed(e)) => self.fail(&e),
                None => self.fail(&anyhow::anyhow!("a choice ended without an outcome")),
            }
        }
    }

    fn push_piece(&mut self, index: usize, mut piece: Piece) {
        if let Some(Some(ts)) = self.tool_streams.get_mut(index) {
            piece.text = ts.feed(&piece.text);
            if piece.text.is_empty() && piece.tokens.is_empty() {
                return;
            }
        }
        let tok = &self.served.tok;
        let logprobs = match (self.job.logprobs, self.job.api) {
            (false, _) => Value::Null,
            (true, Api::Chat) => json!({"content": chat_content(tok, &piece.tokens)}),
            (true, Api::Text) => legacy(tok, &piece.tokens),
        };
        let choice = match self.job.api {
            Api::Chat => json!({"index": index, "delta": {"content": piece.text}, "logprobs": logprobs,
                                "finish_reason": null}),
            Api::Text => json!({"index": index, "text": piece.text, "logprobs": logprobs, "finish_reason": null}),
        };
        self.push_choice(choice);
    }

    fn finish_choice(&mut self, index: usize, out: Outcome) {
        self.served.metrics.completed(self.job.prompts[out.prompt].ids.len(), out.completion_tokens);
        let mut finish = out.finish;
        if let Some(ts) = self.tool_streams.get_mut(index).and_then(Option::take) {
            let delta = match ts.finish() {
                Ok(calls) => {
                    finish = "tool_calls";
                    json!({"tool_calls": tool_calls_json(&calls, true)})
                }
                Err(rest) => json!({"content": rest}),
            };
            if delta != json!({"content": ""}) {
                self.push_choice(json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": null}));
            }
        }
        let choice = match self.job.api {
            Api::Chat => json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish}),
            Api::Text => json!({"index": index, "text": "", "logprobs": null, "finish_reason": out.finish}),
        };
        self.push_choice(choice);
        self.outs.push(out);
        self.left -= 1;
        if self.left > 0 {
            return;
        }
        if self.job.include_usage {
            let mut last = self.head.clone();
            last["choices"] = json!([]);
            last["usage"] = self.job.usage(&self.outs);
            self.push(&last);
        }
        self.queue.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    }

    /// An error event ends the stream; the other choices' generations are dropped with it.
    fn fail(&mut self, e: &anyhow::Error) {
        eprintln!("mappa serve: streaming a completion: {e:#}");
        self.push(&ApiError::generation(e).body());
        self.left = 0;
        self.choices.clear();
    }

    fn push_choice(&mut self, choice: Value) {
        let mut c = self.head.clone();
        c["choices"] = json!([choice]);
        self.push(&c);
    }

    fn push(&mut self, data: &Value) {
        self.queue.push_back(Bytes::from(format!("data: {data}\n\n")));
    }
}
