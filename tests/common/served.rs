//! A `mappa serve` process for tests: started on a free port, its port read from the startup line, killed
//! when dropped.
use mappa::tensor::DType;
use std::io::{BufRead, BufReader};
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
        let dir = tempfile::tempdir().expect("temp dir");
        let model = dir.path().join(MODEL);
        mappa::hf::write_dir(&super::tiny_chat_model(SEED), &model, DType::F32).expect("writing the model");
        Served::spawn(model, Some(dir), extra)
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
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
