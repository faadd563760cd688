//! The HTTP side of `mappa serve`: hyper's HTTP/1.1 on a tokio runtime, with every resource a client can hold
//! bounded in count or in time (issue 14, class 1).
//!
//! - At most `max_connections` connections are open; further clients wait in the kernel's listen queue.
//! - `timeout` bounds each stage a client controls: the request headers, and the idle time between requests
//!   on a kept-alive connection (hyper's header-read timer, which covers both), the request body, and each
//!   write of the response (a client that stops reading a stream).
//! - hyper watches the connection while a handler runs and drops the handler when its client goes away;
//!   dropping it drops the completion's channel, and the engine aborts the sequence at its next token.
use super::error::ApiError;
use super::{chat, completions, stream, Served};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
pub type Reply = Response<Body>;

/// Largest request body read; a larger one is a 413.
const MAX_BODY: usize = 16 << 20;

pub struct Limits {
    pub max_connections: usize,
    pub timeout: Duration,
}

/// Listens on `host:port` and answers until the process ends.
pub async fn serve(served: Served, host: &str, port: u16, limits: Limits) -> Result<()> {
    let listener = TcpListener::bind((host, port)).await.with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr().context("the server has no local address")?;
    eprintln!("mappa serve: listening on http://{addr} (model {})", served.name);
    let served = Arc::new(served);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let slot = slots.clone().acquire_owned().await.context("the connection slots were closed")?;
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning on the error.
                eprintln!("mappa serve: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let mut io = TimeoutStream::new(socket);
        io.set_write_timeout(Some(limits.timeout));
        let io = TokioIo::new(Box::pin(io));
        let (served, timeout) = (served.clone(), limits.timeout);
        tokio::spawn(async move {
            let _open = served.metrics.connection();
            let handler = served.clone();
            let service = service_fn(move |rq| handle(handler.clone(), rq, timeout));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(io, service);
            // Its errors are the client's doing (timeouts, resets, malformed requests) and end only it.
            let _ = conn.await;
            drop(slot);
        });
    }
}

/// Answers one request.
async fn handle(served: Arc<Served>, rq: Request<Incoming>, timeout: Duration) -> Result<Reply, Infallible> {
    let what = format!("{} {}", rq.method(), rq.uri());
    let reply = route(&served, rq, timeout).await.unwrap_or_else(|e| {
        if e.status >= 500 {
            eprintln!("mappa serve: {what}: {}", e.message);
        }
        e.response()
    });
    served.metrics.responded(reply.status().as_u16());
    Ok(reply)
}

async fn route(served: &Arc<Served>, rq: Request<Incoming>, timeout: Duration) -> Result<Reply, ApiError> {
    let path = rq.uri().path().trim_end_matches('/').to_owned();
    let method = rq.method().clone();
    let (get, post) = (method == Method::GET, method == Method::POST);
    let not_allowed = |allow| Err(ApiError::method_not_allowed(method.as_str(), &path, allow));
    match path.as_str() {
        "/v1/models" if get => Ok(json_response(200, &json!({"object": "list", "data": [served.model_object()]}))),
        "/v1/chat/completions" if post => {
            let job = chat::parse(served, &read_body(rq.into_body(), timeout).await?)?;
            if job.stream {
                return stream::response(served.clone(), job, Vec::new());
            }
            let _running = served.metrics.completion();
            chat::completion(served, &job).await.map(|v| json_response(200, &v))
        }
        "/v1/completions" if post => completions::respond(served, &read_body(rq.into_body(), timeout).await?).await,
        "/health" if get => Ok(health(served)),
        "/metrics" if get => {
            let text = served.metrics.render(&served.engine.load(), !served.engine_thread.is_finished());
            let mut reply = Response::new(Full::new(Bytes::from(text)).boxed_unsync());
            reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            Ok(reply)
        }
        "/v1/models" | "/health" | "/metrics" => not_allowed("GET"),
        "/v1/chat/completions" | "/v1/completions" => not_allowed("POST"),
        _ => match path.strip_prefix("/v1/models/") {
            Some(id) if get => served.check_model(id).map(|()| json_response(200, &served.model_object())),
            Some(_) => not_allowed("GET"),
            None => {
                let message = format!("Invalid URL ({method} {})", rq.uri());
                Err(ApiError::new(404, "invalid_request_error", "unknown_url", message))
            }
        },
    }
}

/// 200 while the engine thread runs, 503 once it has stopped (only a failure stops it).
fn health(served: &Served) -> Reply {
    match served.engine_thread.is_finished() {
        false => json_response(200, &json!({"status": "ok", "model": served.name})),
        true => json_response(503, &json!({"status": "the engine thread has stopped", "model": served.name})),
    }
}

/// The whole body, at most [`MAX_BODY`] bytes, arriving within `timeout`.
async fn read_body(body: Incoming, timeout: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            let message = format!("the request body is larger than {MAX_BODY} bytes");
            Err(ApiError::new(413, "invalid_request_error", "body_too_large", message))
        }
        Ok(Err(e)) => Err(ApiError::invalid("invalid_body", format!("cannot read the request body: {e}"))),
        Err(_) => {
            let message = format!("the request body did not arrive within {} s", timeout.as_secs_f64());
            Err(ApiError::new(408, "invalid_request_error", "request_timeout", message))
        }
    }
}

pub fn json_response(status: u16, body: &Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *reply.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}
