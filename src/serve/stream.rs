//! `stream: true`: the completion as Server-Sent Events, one HTTP chunk per event as it is produced: a chunk
//! with the role, one per piece of text, one with the finish reason (and the log-probs, which exist only once
//! generation is over), the usage when asked for, then `[DONE]`. A failure after the headers went out becomes
//! an error event. The body is pulled by hyper as the client reads: if the client goes away or stops
//! reading (the write timeout), the body is dropped, and with it the generation.
use super::chat::{logprobs_json, usage, Job};
use super::completion::Completion;
use super::error::ApiError;
use super::http::{Body, Reply};
use super::metrics::Held;
use super::{completion_id, unix_now, Served};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

/// The streamed response of `job`; the engine has the request before the headers go out, so a refusal
/// there is still a plain error response.
pub fn response(served: Arc<Served>, job: Job) -> Result<Reply, ApiError> {
    let completion = Completion::start(&served, &job).map_err(|e| ApiError::generation(&e))?;
    let head = json!({"id": completion_id(), "object": "chat.completion.chunk", "created": unix_now(),
                      "model": served.name});
    let running = served.metrics.completion();
    let mut events =
        Events { served, job, head, completion: Some(completion), queue: VecDeque::new(), _running: running };
    events.push_chunk(json!({"role": "assistant", "content": ""}), Value::Null, Value::Null);
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

struct Events {
    served: Arc<Served>,
    job: Job,
    /// The fields every chunk shares.
    head: Value,
    /// None once generation is over.
    completion: Option<Completion>,
    /// Events ready to send.
    queue: VecDeque<Bytes>,
    _running: Held,
}

impl Events {
    /// The next event, or None after `[DONE]` (or an error event).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            let completion = self.completion.as_mut()?;
            match completion.next(&self.served.tok).await {
                Ok(Some(piece)) => self.push_chunk(json!({ "content": piece }), Value::Null, Value::Null),
                Ok(None) => self.finish(),
                Err(e) => {
                    eprintln!("mappa serve: streaming a completion: {e:#}");
                    self.completion = None;
                    self.push(&ApiError::generation(&e).body());
                }
            }
        }
    }

    /// The last chunks, once the text is all out.
    fn finish(&mut self) {
        let Some(completion) = self.completion.take() else { return };
        let out = completion.outcome();
        self.served.metrics.completed(self.job.prompt.len(), out.completion_tokens);
        let logprobs = match logprobs_json(&self.served, &out) {
            Ok(l) => l,
            Err(e) => return self.push(&ApiError::generation(&e).body()),
        };
        self.push_chunk(json!({}), logprobs, out.finish.into());
        if self.job.include_usage {
            let mut last = self.head.clone();
            last["choices"] = json!([]);
            last["usage"] = usage(&self.job, &out);
            self.push(&last);
        }
        self.queue.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    }

    fn push_chunk(&mut self, delta: Value, logprobs: Value, finish: Value) {
        let mut c = self.head.clone();
        c["choices"] = json!([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]);
        self.push(&c);
    }

    fn push(&mut self, data: &Value) {
        self.queue.push_back(Bytes::from(format!("data: {data}\n\n")));
    }
}
