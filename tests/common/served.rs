//! A `mappa serve` process for tests: started on a free port, its port read from the startup line, killed
//! when dropped.
use mappa::tensor::DType;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SEED: u64 = 11;
/// The model directory's name: the id the server reports unless --name says otherwise.
pub const MODEL: &str = "tiny-chat";

/// A running `mappa serve`, killed when dropped.
pub struct Served {
    child: Child,
    pub port: u16,
    /// The id the startup line names.
    pub name: String,
    /// The served model's path.
    pub model: PathBuf,
    pub agent: ureq::Agent,
    _dir: Option<tempfile::TempDir>,
}

impl Served {
    /// Writes the tiny model to a temporary directory and serves it on a free port with `extra` flags.
    pub fn start(extra: &[&str]) -> Served {
        Served::start_with(&super::tiny_chat_model(SEED), MODEL, extra)
    }

    /// Writes `model` to a temporary directory named `name` (the id it is served as) and serves it.
    pub fn start_with(model: &mappa::loader::LoadedModel, name: &str, extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        mappa::hf::write_dir(model, &path, DType::F32).expect("writing the model");
        Served::spawn(path, Some(dir), extra)
    }

    /// Serves `model` on a free port; `dir` is deleted when the server is dropped.
    pub fn spawn(model: PathBuf, dir: Option<tempfile::TempDir>, extra: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mappa"))
            .arg("serve")
            .arg("--model")
            .arg(&model)
            .args(["--port", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mappa serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .new_agent();
        let mut served = Served { child, port: 0, name: String::new(), model, agent, _dir: dir };
        // Read the startup line, then keep draining stderr so the server never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("mappa serve: listening on http://") {
                    let _ = tx.send(rest.to_owned());
                }
                eprintln!("[server] {line}");
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("mappa serve printed no listening line");
        let (addr, name) = line.split_once(" (model ").expect("listening line: ADDR (model NAME)");
        served.port = addr.strip_prefix("127.0.0.1:").and_then(|p| p.parse().ok()).expect("127.0.0.1:PORT");
        served.name = name.strip_suffix(')').expect("closing parenthesis").to_owned();
        assert_ne!(served.port, 0);
        served
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let response = self.agent.get(&self.url(path)).call().expect("GET");
        body_json(response)
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response =
            self.agent.post(&self.url(path)).header("Content-Type", "application/json").send(body).expect("POST");
        body_json(response)
    }

    /// A streamed completion over a raw connection, so the framing itself can be checked: every HTTP chunk
    /// must hold exactly one event. Returns the response head and the events' data.
    pub fn stream_at(&self, path: &str, body: &Value) -> (String, Vec<String>) {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let body = body.to_string();
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
        write!(
            conn,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("sending the request");
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).expect("reading the response");
        let raw = String::from_utf8(raw).expect("UTF-8 response");
        let (head, mut rest) = raw.split_once("\r\n\r\n").expect("response head");
        let mut events = Vec::new();
        loop {
            let (size, after) = rest.split_once("\r\n").expect("chunk size line");
            let size = usize::from_str_radix(size, 16).expect("hex chunk size");
            if size == 0 {
                assert_eq!(after, "\r\n", "nothing may follow the last chunk");
                break;
            }
            let (chunk, after) = (after.get(..size).expect("whole chunk"), &after[size..]);
            let data = chunk.strip_prefix("data: ").and_then(|c| c.strip_suffix("\n\n"));
            let data = data.unwrap_or_else(|| panic!("a chunk is not exactly one event: {chunk:?}"));
            assert!(!data.contains("\n\n"), "a chunk holds several events: {chunk:?}");
            events.push(data.to_owned());
            rest = after.strip_prefix("\r\n").expect("CRLF after a chunk");
        }
        (head.to_owned(), events)
    }
}

/// A response's status and JSON body.
pub fn body_json(mut response: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("response body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
