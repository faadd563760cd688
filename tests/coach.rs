//! The coach (src/coach): strict score parsing, prompts, the retry/unscored flow, the log, the rule
//! coach, and the HTTP backend against a tiny in-test server (retries, Retry-After, timeouts, auth,
//! the in-flight limit). The server serves at most a fixed number of connections and stops by itself.
use anyhow::{bail, Result};
mod common;
use mappa::coach::{
    expected_score, parse_score, truncate_middle, Coach, CoachBackend, CoachLog, CoachOutcome, CoachPrompt,
    CoachRequest, HttpCoach, HttpCoachConfig, LocalCoach, LocalScoring, OtherAgents, ParseError, RuleCoach,
    DEFAULT_TOOL_OUTPUT_LIMIT, MATHCHAT_TEMPLATE, NO_TOOL_OUTPUT,
};
use mappa::tokenizer::ChatMessage;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn request(agent: &str, output: &str) -> CoachRequest {
    CoachRequest {
        agent_name: agent.into(),
        agent_role: "Solves the problem step by step.".into(),
        task: "What is 2+3?".into(),
        agent_input: "Problem: What is 2+3?".into(),
        agent_output: output.into(),
        ..CoachRequest::default()
    }
}

/// A backend from a closure over the messages.
struct FnCoach<F>(F);

impl<F: Fn(&[ChatMessage]) -> Result<String> + Send + Sync> CoachBackend for FnCoach<F> {
    fn complete(&self, messages: &[ChatMessage]) -> Result<String> {
        (self.0)(messages)
    }
}

fn fn_coach(f: impl Fn(&[ChatMessage]) -> Result<String> + Send + Sync + 'static, log: Option<CoachLog>) -> Coach {
    Coach::new(FnCoach(f), CoachPrompt::default(), log)
}

fn scored(score: f32, attempts: u32) -> CoachOutcome {
    CoachOutcome::Scored { score, attempts }
}

fn unscored_reason(outcome: CoachOutcome) -> String {
    match outcome {
        CoachOutcome::Unscored { reason } => reason,
        other => panic!("expected Unscored, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP server: one thread per connection, one request per connection, canned responses by
// request number (0, 1, ...).
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// Pause before answering; the request counts as active meanwhile.
    delay: Duration,
}

/// A 200 chat completion whose reply text is `content`.
fn reply(content: &str) -> Canned {
    let body = json!({ "choices": [{ "index": 0, "message": { "role": "assistant", "content": content } }] });
    Canned { status: 200, headers: vec![], body: body.to_string(), delay: Duration::ZERO }
}

fn status(code: u16, body: &str) -> Canned {
    Canned { status: code, headers: vec![], body: body.into(), delay: Duration::ZERO }
}

struct Recorded {
    n: usize,
    request_line: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    served: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
}

struct Server {
    url: String,
    shared: Arc<Shared>,
}

/// Connections served at most, and the server's lifetime: it stops by itself.
const MAX_CONNECTIONS: usize = 64;
const SERVER_LIFETIME: Duration = Duration::from_secs(30);

impl Server {
    fn start(respond: impl Fn(usize) -> Canned + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let shared = Arc::new(Shared::default());
        let respond = Arc::new(respond);
        let state = Arc::clone(&shared);
        thread::spawn(move || {
            let deadline = Instant::now() + SERVER_LIFETIME;
            let mut accepted = 0;
            while accepted < MAX_CONNECTIONS && Instant::now() < deadline && !state.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted += 1;
                        let (state, respond) = (Arc::clone(&state), Arc::clone(&respond));
                        thread::spawn(move || handle(stream, &state, &*respond));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server { url, shared }
    }

    /// Requests seen so far, in request-number order.
    fn requests(&self) -> Vec<Recorded> {
        let mut reqs = std::mem::take(&mut *self.shared.requests.lock().unwrap());
        reqs.sort_by_key(|r| r.n);
        reqs
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn handle(mut stream: TcpStream, state: &Shared, respond: &(dyn Fn(usize) -> Canned + Send + Sync)) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(recorded) = read_request(&mut stream) else { return };
    let n = state.served.fetch_add(1, Ordering::SeqCst);
    let canned = respond(n);
    state.requests.lock().unwrap().push(Recorded { n, ..recorded });
    let active = state.active.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_active.fetch_max(active, Ordering::SeqCst);
    thread::sleep(canned.delay);
    // Leave the active count before answering: the client cannot reuse its slot before the answer.
    state.active.fetch_sub(1, Ordering::SeqCst);
    let mut head = format!(
        "HTTP/1.1 {} Canned\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        canned.status,
        canned.body.len()
    );
    for (k, v) in &canned.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The client may have given up (timeout tests): write errors are expected then.
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(canned.body.as_bytes()));
    let _ = stream.flush();
}

/// Reads one request with a Content-Length body; `None` on a malformed or oversized one.
fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let k = stream.read(&mut chunk).ok().filter(|&k| k > 0 && buf.len() < 1 << 20)?;
        buf.extend_from_slice(&chunk[..k]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length")?.1.parse().ok()?;
    while buf.len() < head_end + len {
        let k = stream.read(&mut chunk).ok().filter(|&k| k > 0)?;
        buf.extend_from_slice(&chunk[..k]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).ok()?;
    Some(Recorded { n: 0, request_line, headers, body })
}

fn http_config(server: &Server) -> HttpCoachConfig {
    HttpCoachConfig {
        base_url: server.url.clone(),
        model: "test-coach".into(),
        api_key_env: None,
        timeout: Duration::from_secs(2),
        max_retries: 2,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        retry_after_max: Duration::from_secs(5),
        max_in_flight: 4,
    }
}

fn http_coach(cfg: HttpCoachConfig) -> Coach {
    Coach::new(HttpCoach::new(cfg).expect("http coach"), CoachPrompt::default(), None)
}

// ---------------------------------------------------------------------------------------------
// parse_score
// ---------------------------------------------------------------------------------------------

#[test]
fn parse_score_accepts_well_formed_score_lines() {
    let ok = [
        ("Good work.\nPROCESS_SCORE: 8", 8.0),
        ("PROCESS_SCORE:7", 7.0),
        ("process_score: 6.5", 6.5),
        ("Analysis.\n**PROCESS_SCORE:** 9\n", 9.0),
        ("**PROCESS_SCORE: 9**", 9.0),
        ("- PROCESS_SCORE: `3`", 3.0),
        ("### PROCESS_SCORE: 10", 10.0),
        ("PROCESS_SCORE: 0", 0.0),
        ("PROCESS_SCORE: -0", 0.0),
        ("PROCESS_SCORE: 08", 8.0),
        ("  PROCESS_SCORE :  4  ", 4.0),
        // Text after the score line is fine.
        ("PROCESS_SCORE: 7\nANSWER_CORRECT: 1", 7.0),
        // An echoed format line holds no number and is ignored; so is a repeat of the same score.
        ("Format: PROCESS_SCORE: <0-10>\nPROCESS_SCORE: <number>\nPROCESS_SCORE: 6", 6.0),
        ("PROCESS_SCORE: 6\nTo repeat:\nPROCESS_SCORE: 6.0", 6.0),
        // The key mid-sentence does not make a score line; the real one decides.
        ("The PROCESS_SCORE: 2 would be too harsh.\nPROCESS_SCORE: 5", 5.0),
    ];
    for (reply, want) in ok {
        assert_eq!(parse_score(reply), Ok(want), "{reply:?}");
    }
}

#[test]
fn parse_score_rejects_everything_else_without_fallback() {
    let bad = [
        ("", ParseError::Missing),
        ("I would rate this a 7.", ParseError::Missing),
        // The first-number fallback of the reference code would have returned 3 here.
        ("Step 3 is wrong. Score: 9", ParseError::Missing),
        ("SCORE: 7", ParseError::Missing),
        ("PROCESS_SCORE = 7", ParseError::Missing),
        ("PROCESS_SCORES: 7", ParseError::Missing),
        ("PROCESS_SCORE: 11", ParseError::OutOfRange(11.0)),
        ("PROCESS_SCORE: -1", ParseError::OutOfRange(-1.0)),
        ("PROCESS_SCORE: 10.5", ParseError::OutOfRange(10.5)),
        ("PROCESS_SCORE: 7/10", ParseError::NotANumber("7/10".into())),
        ("PROCESS_SCORE: 8 out of 10", ParseError::NotANumber("8 out of 10".into())),
        ("PROCESS_SCORE: 7.", ParseError::NotANumber("7.".into())),
        ("PROCESS_SCORE: .5", ParseError::NotANumber(".5".into())),
        ("PROCESS_SCORE: nan", ParseError::NotANumber("nan".into())),
        ("PROCESS_SCORE: NaN", ParseError::NotANumber("NaN".into())),
        ("PROCESS_SCORE: inf", ParseError::NotANumber("inf".into())),
        ("PROCESS_SCORE: 1e1", ParseError::NotANumber("1e1".into())),
        ("PROCESS_SCORE:", ParseError::NotANumber(String::new())),
        ("PROCESS_SCORE: [0 to 10]", ParseError::NotANumber("[0 to 10]".into())),
        ("PROCESS_SCORE: 7 PROCESS_SCORE: 8", ParseError::NotANumber("7 PROCESS_SCORE: 8".into())),
        // The last score line decides, even when an earlier one was valid.
        ("PROCESS_SCORE: 7\nPROCESS_SCORE: twelve", ParseError::NotANumber("twelve".into())),
        ("PROCESS_SCORE: 6\nOn reflection:\nPROCESS_SCORE: 8", ParseError::Conflicting { earlier: 6.0, last: 8.0 }),
    ];
    for (reply, want) in bad {
        assert_eq!(parse_score(reply), Err(want), "{reply:?}");
    }
    // Huge or odd input: an error, never a panic.
    let huge = format!("PROCESS_SCORE: {}", "9".repeat(400));
    assert!(matches!(parse_score(&huge), Err(ParseError::OutOfRange(_))));
    assert!(parse_score("PROCESS_SCORE: ５").is_err());
    assert!(parse_score("PROCESS_SCOR€: 5").is_err());
    // The errors explain themselves.
    assert!(ParseError::Missing.to_string().contains("PROCESS_SCORE: <number>"));
    assert!(ParseError::OutOfRange(11.0).to_string().contains("outside [0, 10]"));
}

// ---------------------------------------------------------------------------------------------
// Prompts
// ---------------------------------------------------------------------------------------------

#[test]
fn prompt_renders_the_request_and_truncates_tool_output() {
    let prompt = CoachPrompt::default();
    let mut req = request("Code Executor", "print(2+3)");
    let text = |req: &CoachRequest| {
        let messages = prompt.render(req).expect("render");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].role, "user");
        messages[0].content.clone()
    };
    let plain = text(&req);
    for part in ["What is 2+3?", "Code Executor", "Solves the problem step by step.", "print(2+3)", NO_TOOL_OUTPUT] {
        assert!(plain.contains(part), "missing {part:?} in\n{plain}");
    }
    assert!(plain.trim_end().ends_with("PROCESS_SCORE: <number>"));
    assert!(!plain.contains("Reference answer") && !plain.contains("Files present"));

    req.tool_output = Some(format!("HEAD{}TAIL", "x".repeat(5000)));
    req.files = vec!["a.csv".into(), "b.pkl".into()];
    req.ground_truth = Some("5".into());
    let full = text(&req);
    assert!(full.contains("HEAD") && full.contains("TAIL") && full.contains("[... 3008 characters truncated ...]"));
    assert!(full.contains("a.csv, b.pkl") && full.contains("Reference answer\n5"));
    assert!(!full.contains(&"x".repeat(1001)));

    // A template given by the user: variables must exist, syntax must be valid.
    let custom = CoachPrompt::new("Score {{ agent_name }}: {{ tool_output }}", 4).expect("custom template");
    req.tool_output = Some("123456789".into());
    assert_eq!(
        custom.render(&req).unwrap()[0].content,
        "Score Code Executor: 12\n[... 5 characters truncated ...]\n89"
    );
    assert!(CoachPrompt::new("{{ no_such_variable }}", 100).is_err());
    assert!(CoachPrompt::new("{% if %}", 100).is_err());
}

#[test]
fn truncate_middle_counts_characters_not_bytes() {
    assert_eq!(truncate_middle("short", 5), "short");
    assert_eq!(truncate_middle("abcdef", 4), "ab\n[... 2 characters truncated ...]\nef");
    assert_eq!(truncate_middle("ééééé", 2), "é\n[... 3 characters truncated ...]\né");
    assert_eq!(truncate_middle("abc", 0), "\n[... 3 characters truncated ...]\n");
}

// ---------------------------------------------------------------------------------------------
// The flow, with in-process backends
// ---------------------------------------------------------------------------------------------

#[test]
fn backend_error_is_unscored_without_a_format_retry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let coach = fn_coach(
        move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            bail!("quota exhausted")
        },
        None,
    );
    let reason = unscored_reason(coach.score_action(&request("Problem Solver", "x")));
    assert!(reason.contains("quota exhausted"), "{reason}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn coach_log_has_one_json_line_per_exchange() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("coach.jsonl");
    let coach = fn_coach(
        |messages| {
            let prompt = &messages[0].content;
            if prompt.contains("FAIL") {
                bail!("backend down")
            } else if prompt.contains("GARBLE") && messages.len() == 1 {
                Ok("I liked it, 9/10.".into())
            } else {
                Ok("Fine.\nPROCESS_SCORE: 6".into())
            }
        },
        Some(CoachLog::open(&path).expect("log")),
    );
    // Long inputs make long lines, which would show any interleaving.
    let outputs = ["ok", "GARBLE", "ok", "GARBLE", "FAIL", "GARBLE"];
    let reqs: Vec<CoachRequest> = outputs
        .iter()
        .enumerate()
        .map(|(i, out)| CoachRequest { agent_input: format!("{i}").repeat(50_000), ..request(&format!("a{i}"), out) })
        .collect();
    let outcomes = coach.score_all(reqs, 4);
    for (out, outcome) in outputs.iter().zip(&outcomes) {
        match *out {
            "ok" => assert_eq!(*outcome, scored(6.0, 1)),
            "GARBLE" => assert_eq!(*outcome, scored(6.0, 2)),
            _ => assert!(unscored_reason(outcome.clone()).contains("backend down")),
        }
    }
    assert_eq!(coach.log().unwrap().failed_writes(), 0);
    let text = std::fs::read_to_string(&path).expect("read log");
    let records: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(records.len(), 2 + 3 * 2 + 1);
    let count = |status: &str| records.iter().filter(|r| r["status"] == status).count();
    assert_eq!((count("scored"), count("parse_error"), count("backend_error")), (5, 3, 1));
    for r in &records {
        assert!(r["unix_ms"].as_u64().is_some() && r["latency_ms"].as_f64().is_some(), "{r}");
        let attempt = r["attempt"].as_u64().unwrap();
        let messages = r["messages"].as_array().unwrap();
        assert_eq!(messages.len(), if attempt == 1 { 1 } else { 3 });
        let agent = r["agent"].as_str().unwrap();
        let i: usize = agent[1..].parse().unwrap();
        assert!(messages[0]["content"].as_str().unwrap().contains(&format!("{i}").repeat(50_000)));
        match r["status"].as_str().unwrap() {
            "scored" => assert_eq!(r["score"], 6.0),
            "parse_error" => assert_eq!(r["reply"], "I liked it, 9/10."),
            _ => assert!(r["reply"].is_null() && r["error"].as_str().unwrap().contains("backend down")),
        }
    }
}

#[test]
fn score_all_and_score_during_keep_request_order() {
    // The reply is the request's index; later requests answer sooner, so completion order is reversed.
    let coach = Arc::new(fn_coach(
        |messages| {
            let prompt = &messages[0].content;
            let i: u64 =
                prompt.split("item ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
            thread::sleep(Duration::from_millis((10 - i) * 5));
            Ok(format!("PROCESS_SCORE: {i}"))
        },
        None,
    ));
    let reqs: Vec<CoachRequest> = (0..10).map(|i| request("Problem Solver", &format!("item {i} done"))).collect();
    let (produced, outcomes) = coach.score_during(4, |submit| {
        for req in &reqs {
            submit(req.clone());
        }
        "produced"
    });
    let want: Vec<CoachOutcome> = (0..10).map(|i| scored(i as f32, 1)).collect();
    assert_eq!((produced, outcomes), ("produced", want.clone()));
    assert_eq!(coach.score_all(reqs, 0), want, "concurrency 0 means 1");
    assert!(coach.score_all(Vec::new(), 8).is_empty());
}

#[test]
fn rule_coach_grades_the_final_answer_through_the_parser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rule.jsonl");
    let rule = RuleCoach::new("Verifier", OtherAgents::Fixed(5.0), false).expect("rule coach");
    let coach = Coach::new(rule, CoachPrompt::default(), Some(CoachLog::open(&path).expect("log")));
    let with_truth = |agent: &str, out: &str| CoachRequest { ground_truth: Some("5".into()), ..request(agent, out) };

    assert_eq!(coach.score_action(&with_truth("Verifier", "So the answer is \\boxed{5}.")), scored(10.0, 1));
    assert_eq!(coach.score_action(&with_truth("Verifier", "So the answer is \\boxed{6}.")), scored(0.0, 1));
    assert_eq!(coach.score_action(&with_truth("Verifier", "The answer is 5.")), scored(0.0, 1), "no box, no fallback");
    assert_eq!(coach.score_action(&request("Problem Solver", "\\boxed{6}")), scored(5.0, 1));
    let reason = unscored_reason(coach.score_action(&request("Verifier", "\\boxed{5}")));
    assert!(reason.contains("no ground truth"), "{reason}");
    // The verdict went through the log as a PROCESS_SCORE reply.
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.lines().next().unwrap().contains("PROCESS_SCORE: 10"));

    let boxed = RuleCoach::new("Verifier", OtherAgents::BoxedMatch { default: 2.0 }, false).unwrap();
    let coach = Coach::new(boxed, CoachPrompt::default(), None);
    assert_eq!(coach.score_action(&with_truth("Problem Solver", "\\boxed{5}")), scored(10.0, 1));
    assert_eq!(coach.score_action(&with_truth("Problem Solver", "maybe 5")), scored(2.0, 1));
    assert_eq!(coach.score_action(&request("Problem Solver", "\\boxed{5}")), scored(2.0, 1), "no ground truth given");
    let lenient = RuleCoach::new("Verifier", OtherAgents::Fixed(0.0), true).unwrap();
    let coach = Coach::new(lenient, CoachPrompt::default(), None);
    assert_eq!(coach.score_action(&with_truth("Verifier", "The answer is 5.")), scored(10.0, 1));

    assert!(RuleCoach::new("Verifier", OtherAgents::Fixed(11.0), false).is_err());
    assert!(RuleCoach::new("Verifier", OtherAgents::BoxedMatch { default: f32::NAN }, false).is_err());
}

/// The process coach of math pipelines: each action on what can be checked in it, from the real sandbox's
/// rendered output (so the error marker it looks for is the one the sandbox writes).
#[test]
fn process_rule_coach_checks_each_action() {
    use mappa::sandbox::{run_python, SandboxConfig};
    let rule = RuleCoach::new("Verifier", OtherAgents::Process, false).expect("rule coach");
    let coach = Coach::new(rule, CoachPrompt::default(), None);
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |code: &str| run_python(code, dir.path(), &SandboxConfig::default()).expect("sandbox").render();
    let code_action = |out: String| CoachRequest {
        ground_truth: Some("42".into()),
        tool_output: Some(out),
        ..request("Code Executor", "```python\n...\n```")
    };
    let cases = [
        (run("print(6 * 7)"), 10.0),
        (run("print('the total is', 6 * 7)"), 10.0),
        (run("x = 6 * 7\nprint(x, 'apples')"), 10.0),
        (run("print(6 * 8)"), 3.0),
        (run("x = 6 * 7"), 3.0), // ran, printed nothing
        (run("print(42)\nraise ValueError('late')"), 0.0),
        (run("print(6 * 7"), 0.0), // a syntax error
    ];
    for (out, want) in cases {
        assert_eq!(coach.score_action(&code_action(out.clone())), scored(want, 1), "{out:?}");
    }
    let text_action = |agent: &str, out: &str| CoachRequest { ground_truth: Some("42".into()), ..request(agent, out) };
    assert_eq!(coach.score_action(&text_action("Problem Solver", "6 x 7 = \\boxed{42}")), scored(10.0, 1));
    assert_eq!(coach.score_action(&text_action("Problem Solver", "\\boxed{41}")), scored(2.0, 1));
    assert_eq!(coach.score_action(&text_action("Problem Solver", "It is 42.")), scored(0.0, 1), "no box");
    assert_eq!(coach.score_action(&text_action("Verifier", "\\boxed{42}")), scored(10.0, 1));
    assert_eq!(coach.score_action(&text_action("Verifier", "\\boxed{41}")), scored(0.0, 1), "final: right or not");
    let reason = unscored_reason(coach.score_action(&request("Problem Solver", "\\boxed{42}")));
    assert!(reason.contains("need the ground truth"), "{reason}");

    // With the last-number fallback (as the final answer is graded), an unboxed answer counts.
    let lenient =
        Coach::new(RuleCoach::new("Verifier", OtherAgents::Process, true).unwrap(), CoachPrompt::default(), None);
    assert_eq!(lenient.score_action(&text_action("Problem Solver", "The answer is 42.")), scored(10.0, 1));
    assert_eq!(lenient.score_action(&text_action("Problem Solver", "The answer is 41.")), scored(2.0, 1));
    assert_eq!(lenient.score_action(&text_action("Problem Solver", "I do not know.")), scored(0.0, 1));
    assert_eq!(lenient.score_action(&text_action("Problem Solver", "It is 41, so \\boxed{42}")), scored(10.0, 1));
    // A reply cut off at the token budget gave no answer, whatever number it stopped on; a cut-off action whose
    // code ran is still scored on its code.
    let cut = |req: CoachRequest| CoachRequest { truncated: true, ..req };
    assert_eq!(lenient.score_action(&cut(text_action("Problem Solver", "First 6 x 7 = 42, then 42"))), scored(0.0, 1));
    assert_eq!(coach.score_action(&cut(code_action(run("print(6 * 7)")))), scored(10.0, 1));
}

// ---------------------------------------------------------------------------------------------
// HttpCoach
// ---------------------------------------------------------------------------------------------

#[test]
fn http_valid_reply_is_scored() {
    let server = Server::start(|_| reply("The step is right.\nPROCESS_SCORE: 8"));
    let coach = http_coach(http_config(&server));
    assert_eq!(coach.score_action(&request("Problem Solver", "2+3 = \\boxed{5}")), scored(8.0, 1));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(reqs[0].header("authorization"), None);
    let body = &reqs[0].body;
    assert_eq!((&body["model"], &body["temperature"]), (&json!("test-coach"), &json!(0)));
    assert_eq!(body["messages"][0]["role"], "user");
    assert!(body["messages"][0]["content"].as_str().unwrap().contains("2+3 = \\boxed{5}"));
}

#[test]
fn http_garbage_then_valid_retries_once_with_the_format() {
    let garbage = "Mostly right; I'd give it 3 out of 10.";
    let server = Server::start(move |n| if n == 0 { reply(garbage) } else { reply("PROCESS_SCORE: 7") });
    let coach = http_coach(http_config(&server));
    assert_eq!(coach.score_action(&request("Problem Solver", "x")), scored(7.0, 2));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let messages = reqs[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0], reqs[0].body["messages"][0]);
    assert_eq!((&messages[1]["role"], &messages[1]["content"]), (&json!("assistant"), &json!(garbage)));
    let reminder = messages[2]["content"].as_str().unwrap();
    assert!(reminder.contains("no line of the form") && reminder.ends_with("PROCESS_SCORE: <number>"), "{reminder}");
}

#[test]
fn http_garbage_twice_is_unscored() {
    let server = Server::start(|_| reply("Nice work, 9/10."));
    let coach = http_coach(http_config(&server));
    let reason = unscored_reason(coach.score_action(&request("Problem Solver", "x")));
    assert!(reason.contains("attempt 1") && reason.contains("attempt 2"), "{reason}");
    assert_eq!(server.requests().len(), 2, "exactly one retry");
}

#[test]
fn http_out_of_range_or_fraction_scores_are_retried() {
    let server = Server::start(|n| reply(if n == 0 { "PROCESS_SCORE: 11" } else { "PROCESS_SCORE: -1" }));
    let reason = unscored_reason(http_coach(http_config(&server)).score_action(&request("Verifier", "x")));
    assert!(reason.contains("11 is outside") && reason.contains("-1 is outside"), "{reason}");

    let server = Server::start(|n| reply(if n == 0 { "PROCESS_SCORE: 7/10" } else { "PROCESS_SCORE: 7" }));
    assert_eq!(http_coach(http_config(&server)).score_action(&request("Verifier", "x")), scored(7.0, 2));
    let reminder = server.requests()[1].body["messages"][2]["content"].as_str().unwrap().to_string();
    assert!(reminder.contains("\"7/10\" is not a plain number"), "{reminder}");
}

#[test]
fn http_500_then_200_is_retried_with_backoff() {
    let server = Server::start(|n| if n == 0 { status(500, "overloaded") } else { reply("PROCESS_SCORE: 4.5") });
    let coach = http_coach(http_config(&server));
    assert_eq!(coach.score_action(&request("Problem Solver", "x")), scored(4.5, 1));
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn http_429_honours_retry_after() {
    let server = Server::start(|n| {
        if n == 0 {
            Canned { headers: vec![("Retry-After", "1".into())], ..status(429, "slow down") }
        } else {
            reply("PROCESS_SCORE: 9")
        }
    });
    let coach = http_coach(http_config(&server));
    let start = Instant::now();
    assert_eq!(coach.score_action(&request("Problem Solver", "x")), scored(9.0, 1));
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(950) && waited < Duration::from_secs(3), "{waited:?}");
}

#[test]
fn http_timeout_is_retried_then_unscored() {
    let server = Server::start(|_| Canned { delay: Duration::from_secs(4), ..reply("PROCESS_SCORE: 5") });
    let cfg = HttpCoachConfig { timeout: Duration::from_millis(300), max_retries: 1, ..http_config(&server) };
    let coach = http_coach(cfg);
    let start = Instant::now();
    let reason = unscored_reason(coach.score_action(&request("Problem Solver", "x")));
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert!(reason.contains("after 2 attempts") && reason.to_lowercase().contains("timeout"), "{reason}");
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn http_400_is_not_retried() {
    let server = Server::start(|_| status(400, "{\"error\": \"unknown model test-coach\"}"));
    let coach = http_coach(http_config(&server));
    let reason = unscored_reason(coach.score_action(&request("Problem Solver", "x")));
    assert!(reason.contains("HTTP 400") && reason.contains("unknown model test-coach"), "{reason}");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn http_sends_the_key_from_the_configured_env_var() {
    let var = format!("MAPPA_TEST_COACH_KEY_{}", std::process::id());
    // A name unique to this test, so no other test reads or writes it.
    std::env::set_var(&var, "sk-test-123");
    let server = Server::start(|_| reply("PROCESS_SCORE: 3"));
    let coach = http_coach(HttpCoachConfig { api_key_env: Some(var.clone()), ..http_config(&server) });
    assert_eq!(coach.score_action(&request("Problem Solver", "x")), scored(3.0, 1));
    assert_eq!(server.requests()[0].header("authorization"), Some("Bearer sk-test-123"));
    std::env::remove_var(&var);

    let missing = "MAPPA_TEST_COACH_KEY_THAT_IS_NOT_SET";
    let cfg = HttpCoachConfig { api_key_env: Some(missing.into()), ..http_config(&server) };
    match HttpCoach::new(cfg) {
        Ok(_) => panic!("a configured but unset key variable must be an error"),
        Err(e) => assert!(e.to_string().contains(missing), "{e}"),
    }
}

#[test]
fn http_concurrency_limit_holds() {
    let server = Server::start(|_| Canned { delay: Duration::from_millis(100), ..reply("PROCESS_SCORE: 1") });
    let coach = http_coach(HttpCoachConfig { max_in_flight: 2, ..http_config(&server) });
    let reqs: Vec<CoachRequest> = (0..8).map(|i| request(&format!("a{i}"), "x")).collect();
    let outcomes = coach.score_all(reqs, 8);
    assert_eq!(outcomes, vec![scored(1.0, 1); 8]);
    assert_eq!(server.requests().len(), 8);
    assert_eq!(server.shared.max_active.load(Ordering::SeqCst), 2, "at most 2 in flight, and both used");
}

/// A tiny random chat model with room for the coach prompt, written as a model directory.
fn coach_model_dir(seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut m = common::tiny_chat_model(seed);
    m.config.max_position_embeddings = 2048;
    mappa::hf::write_dir(&m, dir.path(), mappa::tensor::DType::F32).unwrap();
    dir
}

/// The local coach answers a batch of prompts as one engine batch, and each reply is exactly what the same
/// prompt gets alone; the reply prefix starts every reply, so the strict parser sees the whole answer.
#[test]
fn local_coach_batch_replies_equal_single_replies() {
    let dir = coach_model_dir(5);
    let prefix = "PROCESS_SCORE: ".to_string();
    let coach =
        LocalCoach::load(dir.path(), mappa::model::Backend::Cpu, 3, 0.0, Some(prefix.clone()), LocalScoring::Sampled)
            .unwrap();
    let prompt = CoachPrompt::new(MATHCHAT_TEMPLATE, DEFAULT_TOOL_OUTPUT_LIMIT).unwrap();
    let reqs: Vec<CoachRequest> =
        ["2 + 3 = 5", "the answer is 7", "\\boxed{5}"].iter().map(|out| request("solver", out)).collect();
    let messages: Vec<Vec<ChatMessage>> = reqs.iter().map(|r| prompt.render(r).unwrap()).collect();
    let exchanges: Vec<(&CoachRequest, &[ChatMessage])> =
        reqs.iter().zip(&messages).map(|(r, m)| (r, m.as_slice())).collect();
    let batched: Vec<String> = coach.reply_all(&exchanges, 1).into_iter().map(|(r, _)| r.unwrap()).collect();
    for (m, b) in messages.iter().zip(&batched) {
        assert!(b.starts_with(&prefix), "{b:?}");
        assert_eq!(&coach.complete(m).unwrap(), b, "a batched reply equals the prompt's reply alone");
    }
    // Scoring goes through the same path: one outcome per action, in order, and the constrained reply
    // (a random model!) always parses.
    let outcomes = Coach::new(coach, prompt, None).score_all(reqs, 1);
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes.iter().all(|o| matches!(o, CoachOutcome::Scored { attempts: 1, .. })), "{outcomes:?}");
}

/// Without a reply prefix, a sampled local coach (here a random model, which never writes the format by
/// itself) writes free analysis and then a score line that the constraint leaves room for: every action is
/// scored at the first attempt. A budget too small for the score line is refused when the coach is built.
#[test]
fn constrained_local_coach_always_ends_in_a_score_line() {
    let dir = coach_model_dir(7);
    let load = |max_tokens| {
        LocalCoach::load(dir.path(), mappa::model::Backend::Cpu, max_tokens, 1.0, None, LocalScoring::Sampled)
    };
    let err = load(10).err().expect("10 tokens cannot hold a score line").to_string();
    assert!(err.contains("no room for the score line"), "{err}");
    let coach = load(40).unwrap();
    let prompt = CoachPrompt::new(MATHCHAT_TEMPLATE, DEFAULT_TOOL_OUTPUT_LIMIT).unwrap();
    let reqs: Vec<CoachRequest> = (0..6).map(|i| request("solver", &format!("attempt {i}: 2 + 3 = 5"))).collect();
    let messages: Vec<Vec<ChatMessage>> = reqs.iter().map(|r| prompt.render(r).unwrap()).collect();
    for m in &messages {
        let reply = coach.complete(m).unwrap();
        let last = reply.lines().last().unwrap_or_default();
        assert!(last.starts_with("PROCESS_SCORE: ") && parse_score(&reply).is_ok(), "{reply:?}");
    }
    let outcomes = Coach::new(coach, prompt, None).score_all(reqs, 1);
    assert!(outcomes.iter().all(|o| matches!(o, CoachOutcome::Scored { attempts: 1, .. })), "{outcomes:?}");
}

/// The probability-weighted score from hand-made distributions: digits with and without a leading space
/// add up, "1" splits into 1 and 10 by what follows it, 11..19 are not scores, and too little mass on the
/// scores is an error.
#[test]
fn expected_score_weights_the_score_tokens() {
    let alts = |pairs: &[(&str, f64)]| -> Vec<(String, f32)> {
        pairs.iter().map(|(t, p)| (t.to_string(), p.ln() as f32)).collect()
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    // 7 (0.5 as "7", 0.1 as " 7"), 3 (0.2), 1 (0.2) of which "10" 0.5 and "12" 0.25; "the" is no score.
    let first = alts(&[("7", 0.5), (" 7", 0.1), ("3", 0.2), ("1", 0.2), ("the", 0.0001)]);
    let after_one = alts(&[("0", 0.5), ("2", 0.25), ("\n", 0.25)]);
    let (score, p) = expected_score(&first, &after_one).unwrap();
    let mass = 0.5 + 0.1 + 0.2 + 0.2 * 0.5 + 0.2 * 0.25; // 7, 3, 10, and 1 followed by no digit
    assert!(close(p[7], 0.6 / mass) && close(p[3], 0.2 / mass), "{p:?}");
    assert!(close(p[10], 0.1 / mass) && close(p[1], 0.05 / mass) && p[2] == 0.0, "{p:?}");
    assert!(close(score, (7.0 * 0.6 + 3.0 * 0.2 + 10.0 * 0.1 + 1.0 * 0.05) / mass), "{score}");
    assert!(close(p.iter().sum(), 1.0));

    let err = expected_score(&alts(&[("7", 0.3), ("The", 0.6)]), &alts(&[("0", 0.1)])).unwrap_err().to_string();
    assert!(err.contains("0.300 of its probability"), "{err}");
}

/// SmolLM2 as an expected-score coach: every action gets a graded score in [0, 10] (the format cannot
/// fail), a batch gives what each prompt gives alone, and the reply shows the distribution it came from.
#[test]
fn smollm2_expected_score_coach_always_scores() {
    let coach = LocalCoach::load(
        &common::smollm2_gguf(),
        mappa::model::Backend::Cpu,
        1,
        0.0,
        Some("PROCESS_SCORE: ".into()),
        LocalScoring::Expected,
    )
    .unwrap();
    let prompt = CoachPrompt::new(MATHCHAT_TEMPLATE, DEFAULT_TOOL_OUTPUT_LIMIT).unwrap();
    let reqs: Vec<CoachRequest> = ["2 + 3 = \\boxed{5}", "2 + 3 = \\boxed{7}", "I like turtles."]
        .iter()
        .map(|out| CoachRequest { ground_truth: Some("5".into()), ..request("Problem Solver", out) })
        .collect();
    let messages: Vec<Vec<ChatMessage>> = reqs.iter().map(|r| prompt.render(r).unwrap()).collect();
    let alone: Vec<String> = messages.iter().map(|m| coach.complete(m).unwrap()).collect();
    assert!(alone[0].contains("Expected score") && alone[0].contains("10: "), "{}", alone[0]);
    let outcomes = Coach::new(coach, prompt, None).score_all(reqs, 1);
    for (o, reply) in outcomes.iter().zip(&alone) {
        let CoachOutcome::Scored { score, attempts: 1 } = o else { panic!("{o:?}") };
        assert!((0.0..=10.0).contains(score), "{score}");
        assert!(reply.ends_with(&format!("PROCESS_SCORE: {score:.3}")), "the batch scored {score}: {reply}");
    }
    let scores: Vec<f32> =
        outcomes.iter().map(|o| if let CoachOutcome::Scored { score, .. } = o { *score } else { 0.0 }).collect();
    assert!(scores.iter().any(|s| s.fract() != 0.0), "graded, not whole digits: {scores:?}");
}

// ---------------------------------------------------------------------------------------------
// The coach off the critical path
// ---------------------------------------------------------------------------------------------

/// An agent that takes `delay` per batched turn and answers every request with `reply` (no code).
struct SlowAgent {
    tok: &'static mappa::tokenizer::Tokenizer,
    delay: Duration,
}

impl mappa::rollout::Generator for SlowAgent {
    fn generate_batch(
        &self,
        reqs: &[mappa::rollout::GenRequest],
        _stop_ids: &[u32],
    ) -> Result<Vec<mappa::engine::Generation>> {
        thread::sleep(self.delay);
        let tokens = self.tok.encode("So the answer is \\boxed{42}.<|im_end|>", false)?;
        Ok(reqs
            .iter()
            .map(|_| mappa::engine::Generation {
                logprobs: vec![-0.5; tokens.len()],
                top_logprobs: Vec::new(),
                tokens: tokens.clone(),
                finish: mappa::engine::FinishReason::Stop,
                prefill_s: 0.0,
                decode_s: 0.0,
            })
            .collect())
    }
}

#[test]
fn the_coach_scores_each_action_while_the_rollout_goes_on() {
    // MathChat, 4 episodes: three agent turns of 300 ms each (a rollout of ~0.9 s), 12 actions for an HTTP
    // coach that answers after 200 ms, 2 calls in flight (~1.2 s of coach). In sequence that is ~2.1 s; with
    // the coach scoring each turn's actions while the next turn generates, ~1.5 s (the last turn's actions
    // are scored after the rollout).
    let delay = Duration::from_millis(200);
    let server = Server::start(move |_| Canned { delay, ..reply("Fine.\nPROCESS_SCORE: 7") });
    let coach = http_coach(HttpCoachConfig { max_in_flight: 2, ..http_config(&server) });
    let mut cfg = mappa::run_config::RunConfig::preset("mathchat").unwrap();
    (cfg.coach.concurrency, cfg.rl.samples_per_prompt) = (2, 2);
    let tok = common::chat_tokenizer();
    let agents: Vec<SlowAgent> = (0..3).map(|_| SlowAgent { tok, delay: Duration::from_millis(300) }).collect();
    let engines: Vec<&dyn mappa::rollout::Generator> = agents.iter().map(|a| a as _).collect();
    let tasks: Vec<mappa::data::Task> = (0..2)
        .map(|i| mappa::data::Task {
            id: format!("t{i}"),
            text: "Compute 6*7.".into(),
            answers: vec!["42".into()],
            record: json!({}),
            info: None,
        })
        .collect();
    let indexed: Vec<(usize, &mappa::data::Task)> = tasks.iter().enumerate().collect();
    let dir = tempfile::tempdir().unwrap();

    // In sequence: the whole rollout, then every action scored.
    let start = Instant::now();
    let episodes = mappa::rollout::run_episodes(
        &engines,
        &[tok; 3],
        &cfg,
        &indexed,
        2,
        mappa::rollout::Phase::Train,
        1,
        dir.path(),
        &mut |_, _, _| Ok(()),
    )
    .unwrap();
    let rollout_alone = start.elapsed();
    let mut reqs = Vec::new();
    for ep in &episodes {
        for a in 0..ep.actions.len() {
            reqs.push(mappa::rollout::coach_request(ep, a, &cfg, tok, &tasks[ep.task_index]).unwrap());
        }
    }
    assert_eq!(reqs.len(), 12);
    let outcomes = coach.score_all(reqs, 2);
    let sequential = start.elapsed();
    assert!(outcomes.iter().all(|o| *o == scored(7.0, 1)));

    // Overlapped: the step's own path.
    let start = Instant::now();
    let step = mappa::run::rollout_and_score(&engines, &[tok; 3], &cfg, &indexed, Some(&coach), 1, dir.path()).unwrap();
    let overlapped = start.elapsed();
    assert_eq!(step.episodes, episodes, "the same rollout");
    assert!(step.unscored.is_empty(), "{:?}", step.unscored);
    assert!(step.scores.iter().flatten().all(|s| *s == Some(7.0)) && step.scores.concat().len() == 12);
    let coach_alone = sequential - rollout_alone;
    eprintln!(
        "rollout {:.2} s, coach {:.2} s: in sequence {:.2} s, overlapped {:.2} s (rollout {:.2} s + waiting {:.2} s)",
        rollout_alone.as_secs_f64(),
        coach_alone.as_secs_f64(),
        sequential.as_secs_f64(),
        overlapped.as_secs_f64(),
        step.rollout_s,
        step.coach_s
    );
    // The last turn's 4 actions take 2 x 200 ms after the rollout; everything else overlapped.
    assert!(overlapped < rollout_alone.max(coach_alone) + Duration::from_millis(700), "{overlapped:?}");
    assert!(overlapped.as_secs_f64() < 0.85 * sequential.as_secs_f64(), "{overlapped:?} vs {sequential:?}");
    assert!(server.shared.max_active.load(Ordering::SeqCst) <= 2, "within the coach's concurrency");
}
