//! `mappa serve` end to end: the real binary serves a tiny random chat model (SmolLM2's tokenizer and chat
//! template) from a Hugging Face directory, and its answers are checked over HTTP against generation run in
//! this process on the same model.
mod common;

use mappa::coach::{CoachBackend, HttpCoach, HttpCoachConfig};
use mappa::cpu::CpuBackend;
use mappa::engine::{generate, FinishReason};
use mappa::sample::SamplingParams;
use mappa::tokenizer::{ChatMessage, Tokenizer};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::served::{body_json, Served, MODEL};
/// The tiny model's context length (tests/common's tiny_config).
const CONTEXT: usize = 256;

impl Served {
    /// A chat completion that must succeed.
    fn chat(&self, body: &Value) -> Value {
        let (status, v) = self.post("/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["object"], "chat.completion", "{v}");
        v
    }

    /// A streamed chat completion's response head and events (`Served::stream_at`).
    fn stream(&self, body: &Value) -> (String, Vec<String>) {
        self.stream_at("/v1/chat/completions", body)
    }
}

/// What a stream said: the concatenated text deltas, the finish reason and the usage chunk, if any.
struct Streamed {
    content: String,
    content_events: usize,
    finish: Value,
    usage: Value,
}

fn read_events(events: &[String]) -> Streamed {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("event is not JSON ({err}): {e}")))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{}", chunks[0]);
    let mut out = Streamed { content: String::new(), content_events: 0, finish: Value::Null, usage: Value::Null };
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        if let Some(usage) = c.get("usage") {
            out.usage = usage.clone();
            continue;
        }
        let choice = &c["choices"][0];
        assert!(out.finish.is_null(), "a chunk after the finish chunk: {c}");
        out.finish = choice["finish_reason"].clone();
        if let Some(piece) = choice["delta"]["content"].as_str().filter(|p| !p.is_empty()) {
            out.content.push_str(piece);
            out.content_events += 1;
        }
    }
    out
}

/// The served model, loaded in this process from the same directory.
struct Reference {
    model: CpuBackend,
    tok: Tokenizer,
}

/// In-process generation: the prompt ids, the generation and its text without the stop token.
struct Expected {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    finish: &'static str,
    text: String,
}

impl Reference {
    fn load(served: &Served) -> Reference {
        let loaded = mappa::loader::load(&served.model).expect("loading the served model");
        let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config).expect("tokenizer");
        Reference { model: CpuBackend::new(&loaded).expect("CPU model"), tok }
    }

    fn generate(&self, messages: &[ChatMessage], max_new: usize, params: SamplingParams) -> Expected {
        let prompt = self.tok.encode_chat(messages).expect("prompt");
        let g = generate(&self.model, &prompt, max_new, params, self.tok.stop_ids(), |_| Ok(())).expect("generate");
        let content = match g.finish {
            FinishReason::Stop => &g.tokens[..g.tokens.len() - 1],
            FinishReason::Length => &g.tokens[..],
        };
        let text = self.tok.decode(content, true).expect("decode");
        let finish = match g.finish {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        };
        Expected { prompt, tokens: g.tokens, logprobs: g.logprobs, finish, text }
    }
}

fn greedy() -> SamplingParams {
    SamplingParams::default()
}

fn messages() -> Vec<ChatMessage> {
    vec![ChatMessage::new("system", "You are terse."), ChatMessage::new("user", "Name a colour.")]
}

fn greedy_body(max_tokens: usize) -> Value {
    json!({"messages": messages(), "temperature": 0, "max_tokens": max_tokens})
}

fn assert_error(status: u16, v: &Value, want_status: u16, want_code: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: {v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    assert!(e["type"].is_string(), "{what}: {v}");
    assert_eq!(e["code"], want_code, "{what}: {v}");
}

#[test]
fn models_endpoint_lists_the_served_name() {
    let served = Served::start(&[]);
    assert_eq!(served.name, MODEL);
    let (status, v) = served.get("/v1/models");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().expect("data list");
    assert_eq!(data.len(), 1, "{v}");
    assert_eq!((&data[0]["id"], &data[0]["object"]), (&json!(MODEL), &json!("model")));
    let (status, v) = served.get(&format!("/v1/models/{MODEL}"));
    assert_eq!((status, &v["id"]), (200, &json!(MODEL)), "{v}");
    let (status, v) = served.get("/v1/models/gpt-4o");
    assert_error(status, &v, 404, "model_not_found", "unknown model id");
}

#[test]
fn greedy_completion_matches_in_process_generation() {
    let served = Served::start(&[]);
    let expected = Reference::load(&served).generate(&messages(), 24, greedy());
    assert!(!expected.text.is_empty(), "the test needs a non-empty completion");

    let v = served.chat(&greedy_body(24));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], expected.text.as_str(), "{v}");
    assert_eq!(choice["finish_reason"], expected.finish, "{v}");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(v["model"], MODEL);
    let (p, c) = (expected.prompt.len(), expected.tokens.len());
    assert_eq!(v["usage"], json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}));

    // The same prompt with the model named and the user content given as a list of text parts.
    let parts = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
        ],
        "temperature": 0,
        "max_completion_tokens": 24,
    });
    assert_eq!(served.chat(&parts)["choices"][0]["message"]["content"], expected.text.as_str());

    // logprobs: one entry per content token, the values generate() reports.
    let mut body = greedy_body(24);
    body["logprobs"] = json!(true);
    let v = served.chat(&body);
    let content = v["choices"][0]["logprobs"]["content"].as_array().expect("logprobs.content");
    let n_content = expected.tokens.len() - usize::from(expected.finish == "stop");
    assert_eq!(content.len(), n_content, "{v}");
    for (entry, want) in content.iter().zip(&expected.logprobs) {
        let got = entry["logprob"].as_f64().expect("logprob") as f32;
        assert!((got - want).abs() < 1e-4, "logprob {got} vs {want}");
        assert!(entry["token"].is_string(), "{entry}");
    }
    assert_eq!(token_bytes(content), expected.text.as_bytes(), "the tokens' bytes spell the text");
}

/// `n` choices share one prompt; choice i samples with seed + i, streamed or not.
#[test]
fn n_choices_each_sample_with_their_own_seed() {
    let served = Served::start(&[]);
    let reference = Reference::load(&served);
    let body = json!({"messages": messages(), "temperature": 1.0, "seed": 40, "max_tokens": 12, "n": 3});
    let v = served.chat(&body);
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3, "{v}");
    let mut completion_tokens = 0;
    for (i, choice) in choices.iter().enumerate() {
        let params = SamplingParams { temperature: 1.0, seed: 40 + i as u64, ..SamplingParams::default() };
        let want = reference.generate(&messages(), 12, params);
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["content"], want.text.as_str(), "choice {i}");
        completion_tokens += want.tokens.len();
    }
    assert_ne!(choices[0]["message"]["content"], choices[1]["message"]["content"]);
    let p = reference.generate(&messages(), 1, greedy()).prompt.len();
    let usage =
        json!({"prompt_tokens": p, "completion_tokens": completion_tokens, "total_tokens": p + completion_tokens});
    assert_eq!(v["usage"], usage, "the prompt counts once");

    let mut streamed = body.clone();
    streamed["stream_options"] = json!({"include_usage": true});
    let (_, events) = served.stream(&streamed);
    let mut texts = vec![String::new(); 3];
    let mut finished = 0;
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(e).expect("event JSON");
        for c in chunk["choices"].as_array().expect("choices") {
            let i = c["index"].as_u64().expect("index") as usize;
            texts[i] += c["delta"]["content"].as_str().unwrap_or_default();
            finished += usize::from(!c["finish_reason"].is_null());
        }
        if !chunk["usage"].is_null() {
            assert_eq!(chunk["usage"], usage);
        }
    }
    assert_eq!(finished, 3);
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(text, choices[i]["message"]["content"].as_str().expect("content"), "streamed choice {i}");
    }
}

/// OpenAI's ranges are enforced, `top_p = 0` keeps the most likely token, and fields this server does not
/// implement are refused naming the field (before, they were accepted and ignored).
#[test]
fn openai_ranges_and_unsupported_fields() {
    let served = Served::start(&[]);
    let refused = [
        ("temperature", json!(2.5), "invalid_value"),
        ("n", json!(129), "invalid_value"),
        // Beyond the 64 sequences the engine runs at once (was a 500 from the engine).
        ("n", json!(65), "invalid_value"),
        ("stop", json!(["a", "b", "c", "d", "e"]), "invalid_value"),
        ("presence_penalty", json!(0.5), "unsupported"),
        ("frequency_penalty", json!(-1), "unsupported"),
        ("logit_bias", json!({"42": 5}), "unsupported"),
        // SmolLM2's template has no tool support (tests/serve_tools.rs serves one that has).
        ("tools", json!([{"type": "function", "function": {"name": "f"}}]), "unsupported"),
        ("tool_choice", json!("required"), "invalid_value"),
        ("response_format", json!({"type": "xml"}), "invalid_value"),
    ];
    for (field, value, code) in refused {
        let mut body = greedy_body(4);
        body[field] = value;
        let (status, v) = served.post("/v1/chat/completions", &body.to_string());
        assert_error(status, &v, 400, code, field);
        assert_eq!(v["error"]["param"], field, "{v}");
    }
    let neutral = json!({"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "tool_choice": "none",
                         "response_format": {"type": "text"}, "temperature": 2});
    let mut body = greedy_body(4);
    for (k, v) in neutral.as_object().expect("object") {
        body[k] = v.clone();
    }
    served.chat(&body);
    let greedy_text = served.chat(&greedy_body(8))["choices"][0]["message"]["content"].clone();
    let top_p_zero = json!({"messages": messages(), "temperature": 1, "top_p": 0, "max_tokens": 8});
    assert_eq!(served.chat(&top_p_zero)["choices"][0]["message"]["content"], greedy_text);
}

#[test]
fn stream_matches_the_non_stream_completion() {
    let served = Served::start(&[]);
    let full = served.chat(&greedy_body(24));
    let mut body = greedy_body(24);
    body["stream_options"] = json!({"include_usage": true});
    let (head, events) = served.stream(&body);
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let streamed = read_events(&events);
    assert_eq!(streamed.content, full["choices"][0]["message"]["content"].as_str().expect("content"));
    assert!(streamed.content_events >= 2, "the text should arrive in pieces: {events:?}");
    assert_eq!(streamed.finish, full["choices"][0]["finish_reason"]);
    assert_eq!(streamed.usage, full["usage"]);
}

/// `top_logprobs: 3`: three alternatives per token, most likely first, of the distribution the token's own
/// log-prob comes from (the engine's, exactly); greedy takes the first; a sampled token is never more likely
/// than the first and equals its own entry; streamed, each piece brings its tokens' entries, which together
/// are the whole answer's.
#[test]
fn chat_top_logprobs_are_sorted_and_consistent_with_the_sampled_token() {
    let served = Served::start(&[]);
    let reference = Reference::load(&served);
    let content_of = |v: &Value| v["choices"][0]["logprobs"]["content"].as_array().expect("content").clone();
    let lp = |e: &Value| e["logprob"].as_f64().expect("logprob") as f32;
    let mut body = greedy_body(16);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let v = served.chat(&body);
    let content = content_of(&v);
    let params = SamplingParams { top_logprobs: 3, ..greedy() };
    let prompt = reference.tok.encode_chat(&messages()).expect("prompt");
    let g = generate(&reference.model, &prompt, 16, params, reference.tok.stop_ids(), |_| Ok(())).expect("generate");
    assert!(content.len() > 2, "{v}");
    for (i, entry) in content.iter().enumerate() {
        let top = entry["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 3, "{entry}");
        assert!(top.windows(2).all(|w| lp(&w[0]) >= lp(&w[1])), "sorted: {entry}");
        assert_eq!((lp(&top[0]), &top[0]["token"]), (lp(entry), &entry["token"]), "greedy takes the first: {entry}");
        assert_eq!(top[0]["bytes"], entry["bytes"]);
        for (alt, &(id, want)) in top.iter().zip(&g.top_logprobs[i]) {
            assert_eq!(lp(alt), want, "token {i}: the engine's alternatives");
            assert_eq!(alt["bytes"], json!(reference.tok.token_bytes(id).expect("bytes")));
        }
    }

    let sampled = json!({"messages": messages(), "temperature": 1.0, "seed": 3, "max_tokens": 16, "logprobs": true,
                         "top_logprobs": 3});
    let v = served.chat(&sampled);
    let content = content_of(&v);
    for entry in &content {
        let top = entry["top_logprobs"].as_array().expect("top_logprobs");
        assert!(lp(entry) <= lp(&top[0]), "{entry}");
        if let Some(own) = top.iter().find(|a| a["bytes"] == entry["bytes"]) {
            assert_eq!(lp(own), lp(entry), "the sampled token's own entry: {entry}");
        }
    }
    assert_eq!(token_bytes(&content), v["choices"][0]["message"]["content"].as_str().expect("text").as_bytes());

    let (_, events) = served.stream(&sampled);
    let mut streamed = Vec::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(e).expect("event JSON");
        if let Some(entries) = chunk["choices"][0]["logprobs"]["content"].as_array() {
            streamed.extend(entries.iter().cloned());
        }
    }
    assert_eq!(streamed, content, "the streamed entries are the whole answer's");
}

/// A stop string across a token boundary of `e` (the last character of tokens[..k], the first one token k adds),
/// so a stream must hold that first character back until the next token decides; with the text before it and
/// the tokens generated up to the stop string's end (k + 1).
fn stop_across_tokens(reference: &Reference, e: &Expected) -> (String, String, usize) {
    let plain = |c: char| c.is_alphanumeric();
    let decode = |k: usize| reference.tok.decode(&e.tokens[..k], true).expect("decode");
    for k in 2..e.tokens.len() {
        let (before, after) = (decode(k), decode(k + 1));
        let (Some(last), Some(next)) =
            (before.chars().last(), after.get(before.len()..).and_then(|s| s.chars().next()))
        else {
            continue;
        };
        let stop = format!("{last}{next}");
        let at = before.len() - last.len_utf8();
        if plain(last) && plain(next) && e.text.find(&stop) == Some(at) {
            return (stop, before[..at].to_owned(), k + 1);
        }
    }
    panic!("no stop string across a token boundary in {:?}", e.text);
}

#[test]
fn stop_strings_cut_the_text() {
    let served = Served::start(&[]);
    let reference = Reference::load(&served);
    let expected = reference.generate(&messages(), 24, greedy());
    let (stop, cut, tokens) = stop_across_tokens(&reference, &expected);

    let mut body = greedy_body(24);
    body["stop"] = json!(stop);
    let v = served.chat(&body);
    assert_eq!(v["choices"][0]["message"]["content"], cut, "stop {stop:?} in {:?}", expected.text);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], tokens, "generation ends with the token that completes the stop");

    // A list of stop strings, streamed: the same cut, and nothing past it was sent.
    body["stop"] = json!(["never-generated-zzz", stop]);
    let (_, events) = served.stream(&body);
    let streamed = read_events(&events);
    assert_eq!((streamed.content.as_str(), &streamed.finish), (cut.as_str(), &json!("stop")));

    // With logprobs (generation runs on, the text is cut all the same).
    body["logprobs"] = json!(true);
    let v = served.chat(&body);
    assert_eq!(v["choices"][0]["message"]["content"], cut);
    assert_eq!(v["usage"]["completion_tokens"], tokens);
    let logprobs = v["choices"][0]["logprobs"]["content"].as_array().expect("logprobs");
    assert_eq!(token_bytes(logprobs), cut.as_bytes(), "the tokens' bytes spell exactly the text");
    assert!(logprobs.len() < tokens, "an entry for a token past the stop string");
}

/// The `bytes` of every entry of a `logprobs.content` list, concatenated.
fn token_bytes(content: &[Value]) -> Vec<u8> {
    let bytes = |e: &Value| {
        e["bytes"].as_array().expect("bytes").iter().map(|b| b.as_u64().expect("byte") as u8).collect::<Vec<u8>>()
    };
    content.iter().flat_map(bytes).collect()
}

#[test]
fn seeded_sampling_is_reproducible() {
    let served = Served::start(&[]);
    let body = |seed: u64| json!({"messages": messages(), "temperature": 1.0, "seed": seed, "max_tokens": 16});
    let content = |v: Value| v["choices"][0]["message"]["content"].as_str().expect("content").to_owned();
    let first = content(served.chat(&body(1234)));
    assert_eq!(content(served.chat(&body(1234))), first);
    assert_ne!(content(served.chat(&body(1235))), first, "another seed should sample another text");
    let params = SamplingParams { temperature: 1.0, seed: 1234, ..SamplingParams::default() };
    assert_eq!(Reference::load(&served).generate(&messages(), 16, params).text, first);
}

#[test]
fn bad_requests_are_400_with_an_error_object() {
    let served = Served::start(&[]);
    let user = json!([{"role": "user", "content": "hi"}]);
    let long_prompt = "hello ".repeat(CONTEXT);
    let cases = [
        ("{not json".to_owned(), "invalid_json"),
        (json!({"model": MODEL}).to_string(), "invalid_request"),
        (json!({"messages": []}).to_string(), "invalid_value"),
        (json!({"messages": user, "n": 0}).to_string(), "invalid_value"),
        (json!({"messages": user, "top_logprobs": 3}).to_string(), "invalid_value"),
        (json!({"messages": user, "logprobs": true, "top_logprobs": 21}).to_string(), "invalid_value"),
        (json!({"messages": user, "temperature": -1}).to_string(), "invalid_value"),
        (json!({"messages": user, "temperature": "hot"}).to_string(), "invalid_request"),
        (json!({"messages": user, "top_p": 1.5}).to_string(), "invalid_value"),
        (json!({"messages": user, "max_tokens": 0}).to_string(), "invalid_value"),
        (json!({"messages": user, "max_tokens": 1_000_000_000}).to_string(), "invalid_value"),
        (json!({"messages": user, "max_tokens": -5}).to_string(), "invalid_request"),
        (json!({"messages": user, "stop": 5}).to_string(), "invalid_request"),
        (json!({"messages": [{"role": "tool", "content": "x"}]}).to_string(), "unsupported"),
        (json!({"messages": [{"role": "critic", "content": "x"}]}).to_string(), "invalid_value"),
        (json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string(), "unsupported"),
        (json!({"messages": [{"role": "user", "content": long_prompt}]}).to_string(), "context_length_exceeded"),
    ];
    for (body, code) in &cases {
        let (status, v) = served.post("/v1/chat/completions", body);
        assert_error(status, &v, 400, code, body);
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    for (field, value, param) in
        [("n", json!(0), "n"), ("top_logprobs", json!(3), "top_logprobs"), ("messages", json!([]), "messages")]
    {
        let mut body = json!({"messages": user});
        body[field] = value;
        let (_, v) = served.post("/v1/chat/completions", &body.to_string());
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    let (status, v) = served.post("/v1/chat/completions", &json!({"model": "gpt-4o", "messages": user}).to_string());
    assert_error(status, &v, 404, "model_not_found", "wrong model");
    assert_eq!(v["error"]["param"], "model", "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("gpt-4o")), "{v}");
    // Still serving.
    served.chat(&greedy_body(2));
}

#[test]
fn unknown_path_is_404_and_wrong_method_405() {
    let served = Served::start(&[]);
    let (status, v) = served.get("/v1/nope");
    assert_error(status, &v, 404, "unknown_url", "GET /v1/nope");
    let (status, v) = served.post("/v1/embeddings", "{}");
    assert_error(status, &v, 404, "unknown_url", "POST /v1/embeddings");
    let response = served.agent.get(&served.url("/v1/chat/completions")).call().expect("GET");
    assert_eq!(response.headers().get("allow").and_then(|h| h.to_str().ok()), Some("POST"));
    let (status, v) = body_json(response);
    assert_error(status, &v, 405, "method_not_allowed", "GET /v1/chat/completions");
    let (status, v) = served.post("/v1/models", "{}");
    assert_error(status, &v, 405, "method_not_allowed", "POST /v1/models");
}

#[test]
fn concurrent_requests_get_the_greedy_answer() {
    let served = Served::start(&["--max-connections", "3"]);
    let expected = Reference::load(&served).generate(&messages(), 24, greedy()).text;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| served.chat(&greedy_body(24)))).collect();
        for h in handles {
            let v = h.join().expect("request thread");
            assert_eq!(v["choices"][0]["message"]["content"], expected.as_str());
        }
    });
}

#[test]
fn http_coach_gets_a_reply_from_the_server() {
    let served = Served::start(&["--name", "coach-model", "--max-tokens", "16"]);
    assert_eq!(served.name, "coach-model");
    let config = |model: &str| HttpCoachConfig {
        base_url: format!("http://127.0.0.1:{}/v1", served.port),
        model: model.into(),
        api_key_env: None,
        timeout: Duration::from_secs(120),
        max_retries: 0,
        ..HttpCoachConfig::default()
    };
    let prompt = [ChatMessage::new("user", "Rate this step from 0 to 10.")];
    let coach = HttpCoach::new(config("coach-model")).expect("http coach");
    let reply = coach.complete(&prompt).expect("coach reply");
    // The coach asks for temperature 0 and sets no max_tokens: greedy, with the server's --max-tokens budget.
    let expected = Reference::load(&served).generate(&prompt, 16, greedy()).text;
    assert!(!expected.is_empty());
    assert_eq!(reply, expected);

    let wrong = HttpCoach::new(config("gemini-2.5-flash")).expect("http coach");
    let err = format!("{:#}", wrong.complete(&prompt).expect_err("an unknown model must fail"));
    assert!(err.contains("404") && err.contains("model_not_found"), "{err}");
}

#[test]
fn gguf_model_stops_at_its_end_of_turn_token() {
    let served = Served::spawn(common::smollm2_gguf(), None, &[]);
    assert_eq!(served.name, "SmolLM2-135M-Instruct.Q4_1", "the default name is the file stem");
    let prompt = [ChatMessage::new("user", "What is 2+3? Answer briefly.")];
    let expected = Reference::load(&served).generate(&prompt, 40, greedy());
    assert_eq!(expected.finish, "stop", "SmolLM2 answers in fewer than 40 tokens: {:?}", expected.text);
    let v = served.chat(&json!({"messages": prompt, "temperature": 0, "max_tokens": 40}));
    let choice = &v["choices"][0];
    assert_eq!((&choice["message"]["content"], &choice["finish_reason"]), (&json!(expected.text), &json!("stop")));
    assert!(!expected.text.contains("<|im_end|>"), "{:?}", expected.text);
    let (p, c) = (expected.prompt.len(), expected.tokens.len());
    assert_eq!(v["usage"], json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}));
}

/// Server flags out of range are refused at start, naming the flag and its bound.
#[test]
fn bad_flags_are_refused_at_start() {
    for (flag, value, want) in [
        ("--kv-fraction", "1.5", "(0, 0.95]"),
        ("--kv-fraction", "0", "(0, 0.95]"),
        ("--max-connections", "0", "[1, 65536]"),
        ("--max-connections", "100000000", "[1, 65536]"),
        ("--timeout", "0", "[0.1, 86400]"),
        ("--timeout", "NaN", "[0.1, 86400]"),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mappa"))
            .args(["serve", "--model", "/nonexistent", flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(flag) && err.contains(want), "{flag} {value}: {err}");
    }
}

/// A sample of `GET /metrics` without labels.
fn metric(served: &Served, name: &str) -> u64 {
    let mut response = served.agent.get(&served.url("/metrics")).call().expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.body_mut().read_to_string().expect("metrics text");
    let line = text.lines().find(|l| l.split(' ').next() == Some(name));
    let line = line.unwrap_or_else(|| panic!("no sample {name} in:\n{text}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("not a count: {line}"))
}

/// Polls `cond` every 10 ms until it holds or `secs` pass; says whether it held.
fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Clients that stall (headers never finished, a body that never comes, a connection that sends nothing)
/// are cut off after `--timeout`, and connections beyond `--max-connections` wait their turn: before, four
/// stalled bodies held all four workers and every later request hung.
#[test]
fn stalled_clients_are_cut_off_and_others_still_served() {
    let served = Served::start(&["--max-connections", "4", "--timeout", "1"]);
    let open = |first: &str| {
        let mut c = TcpStream::connect(("127.0.0.1", served.port)).expect("connect");
        c.write_all(first.as_bytes()).expect("send");
        c
    };
    let body = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 1000000\r\n\r\n{\"messages\": [";
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Len";
    let stalled: Vec<(TcpStream, bool)> =
        [(body, true), (body, true), (body, true), (head, false), (head, false), ("", false), ("", false)]
            .into_iter()
            .map(|(first, answered)| (open(first), answered))
            .collect();
    let t0 = Instant::now();
    let v = served.chat(&greedy_body(4));
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert!(t0.elapsed() < Duration::from_secs(20), "served only after {:?}", t0.elapsed());
    for (i, (mut c, answered)) in stalled.into_iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap_or_else(|e| panic!("stalled connection {i} was not closed: {e}"));
        let got = String::from_utf8_lossy(&got);
        if answered {
            assert!(got.starts_with("HTTP/1.1 408"), "connection {i}: {got}");
            assert!(got.contains("request_timeout"), "connection {i}: {got}");
        }
    }
    // Open now: this metrics request and the agent's kept-alive connection of the chat request.
    assert!(metric(&served, "mappa_http_connections_open") <= 2, "stalled connections are still counted open");
}

/// A client that leaves before its answer stops its generation at the next token; before, it ran on to the
/// token budget. The tiny model gets a long context so that the budget would take a while.
#[test]
fn a_client_that_leaves_stops_its_generation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(MODEL);
    let mut model = common::tiny_chat_model(common::served::SEED);
    model.config.max_position_embeddings = 1 << 16;
    mappa::hf::write_dir(&model, &path, mappa::tensor::DType::F32).expect("writing the model");
    let served = Served::spawn(path, Some(dir), &["--timeout", "2"]);
    // Control: greedy, this prompt's first `budget` tokens hold no stop token.
    let budget = 2000;
    let v = served.chat(&greedy_body(budget));
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    let before = metric(&served, "mappa_engine_generated_tokens_total");

    let body = greedy_body(60_000).to_string();
    let mut conn = TcpStream::connect(("127.0.0.1", served.port)).expect("connect");
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("sending the request");
    let started = eventually(60, || metric(&served, "mappa_engine_generated_tokens_total") > before + 5);
    assert!(started, "the generation did not start");
    assert_eq!(metric(&served, "mappa_completions_running"), 1);
    drop(conn);
    let stopped = eventually(5, || {
        metric(&served, "mappa_engine_sequences_running") == 0 && metric(&served, "mappa_completions_running") == 0
    });
    assert!(stopped, "the generation went on after its client left");
    let after = metric(&served, "mappa_engine_generated_tokens_total");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric(&served, "mappa_engine_generated_tokens_total"), after, "tokens still being generated");
    assert!(after - before < budget as u64, "{} tokens generated for nobody", after - before);

    // A streaming client that stops reading: once the socket buffers are full, a write waits past --timeout
    // and the connection is dropped, and with it the generation.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("small receive buffer");
    socket.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], served.port)).into()).expect("connect");
    let mut conn = TcpStream::from(socket);
    let mut body = greedy_body(60_000);
    body["stream"] = json!(true);
    let body = body.to_string();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("sending the request");
    assert!(eventually(60, || metric(&served, "mappa_completions_running") == 1), "the stream did not start");
    let stopped = eventually(60, || {
        metric(&served, "mappa_engine_sequences_running") == 0 && metric(&served, "mappa_completions_running") == 0
    });
    assert!(stopped, "a stream nobody reads went on");
    let generated = metric(&served, "mappa_engine_generated_tokens_total") - after;
    assert!(generated < 60_000, "the stream ran to its budget");
    drop(conn);
}

#[test]
fn health_and_metrics_answer() {
    let served = Served::start(&[]);
    let (status, v) = served.get("/health");
    assert_eq!((status, &v["status"]), (200, &json!("ok")), "{v}");
    served.chat(&greedy_body(3));
    assert_eq!(metric(&served, "mappa_completion_tokens_total"), 3);
    assert_eq!(metric(&served, "mappa_engine_up"), 1);
    assert!(metric(&served, "mappa_engine_kv_blocks") > 0);
    assert_eq!(metric(&served, "mappa_engine_kv_blocks_used"), 0, "blocks are freed after the request");
    let (status, v) = served.post("/health", "{}");
    assert_error(status, &v, 405, "method_not_allowed", "POST /health");
}
