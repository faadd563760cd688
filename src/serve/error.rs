//! OpenAI's error objects: `{"error": {"message", "type", "code", "param"}}` with the HTTP status to send.
use super::http::{json_response, Reply};
use serde_json::{json, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    kind: &'static str,
    code: &'static str,
    pub message: String,
    /// The request field at fault, when one is.
    param: Option<&'static str>,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, code, message: message.into(), param: None, allow: None }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_request_error", code, message)
    }

    /// Names the request field at fault.
    pub fn param(self, param: &'static str) -> ApiError {
        ApiError { param: Some(param), ..self }
    }

    pub fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> ApiError {
        let message = format!("{method} is not allowed on {path}; use {allow}");
        ApiError { allow: Some(allow), ..ApiError::new(405, "invalid_request_error", "method_not_allowed", message) }
    }

    pub fn generation(e: &anyhow::Error) -> ApiError {
        ApiError::new(500, "server_error", "generation_failed", format!("generation failed: {e:#}"))
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}})
    }

    pub fn response(&self) -> Reply {
        let mut response = json_response(self.status, &self.body());
        if let Some(allow) = self.allow {
            response.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allow));
        }
        response
    }
}
