//! `mappa serve` through the official OpenAI Python client (pinned; tools/setup.sh installs it under
//! `$MAPPA_HOME/py-openai`): the checks in `tests/openai_client.py` against the tiny chat model, and its tool
//! calls against the same model with a Qwen-style chat template.
mod common;

use common::served::Served;
use std::process::Command;

#[test]
fn the_official_openai_client_works_against_the_server() {
    let client = mappa::loader::setup_home().expect("HOME or MAPPA_HOME must be set").join("py-openai");
    assert!(client.join("openai").is_dir(), "{} is missing: run tools/setup.sh first", client.display());
    let served = Served::start(&[]);
    // A second server for tools: the tiny model with a Qwen-style template (SmolLM2's has no tool support).
    let tools = Served::start_with(&common::tiny_tools_model(common::served::SEED), "tiny-tools", &[]);
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py"))
        .args(["--base-url", &served.url("/v1"), "--model", &served.name])
        .args(["--tools-base-url", &tools.url("/v1"), "--tools-model", &tools.name])
        .env("PYTHONPATH", &client)
        .output()
        .expect("running python3");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the client's checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("openai client checks passed"), "{stdout}");
}
