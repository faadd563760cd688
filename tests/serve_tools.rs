//! Tool calling and structured outputs through `mappa serve`: the tiny chat model (SmolLM2's tokenizer,
//! random weights) with a Qwen2.5-style chat template, which renders `tools` and writes calls as Hermes
//! `<tool_call>` markup. A random model never calls a tool by itself, so calls are forced (`tool_choice`
//! `required` or a named function: a grammar), and the parser's own cases are unit tests in
//! `src/serve/tools.rs`.
mod common;

use common::served::{Served, SEED};
use mappa::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// Serves the tiny chat model with the Qwen-style template; returns it with its tokenizer.
fn serve_tools() -> (Served, Tokenizer) {
    let model = common::tiny_tools_model(SEED);
    let tok = Tokenizer::new(&model.tokenizer, &model.config).expect("tokenizer");
    (Served::start_with(&model, "tiny-tools", &[]), tok)
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": false,
        },
    }})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
                       "additionalProperties": false},
    }})
}

fn user() -> Value {
    json!([{"role": "user", "content": "What is the weather in Paris?"}])
}

fn named(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name}})
}

fn ok(served: &Served, body: &Value) -> Value {
    let (status, v) = served.post("/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{v}");
    v
}

fn refused(served: &Served, body: &Value, param: &str) -> Value {
    let (status, v) = served.post("/v1/chat/completions", &body.to_string());
    assert_eq!(status, 400, "{body}: {v}");
    assert_eq!(v["error"]["param"], param, "{v}");
    v
}

/// A weather call's arguments, checked against the tool's schema.
fn check_weather(arguments: &str) -> Value {
    let args: Value =
        serde_json::from_str(arguments).unwrap_or_else(|e| panic!("arguments not JSON ({e}): {arguments}"));
    let o = args.as_object().expect("an object");
    assert_eq!(o.len(), 2, "{args}");
    assert!(["Paris", "Oslo", "Lima"].contains(&o["city"].as_str().unwrap()), "{args}");
    assert!(["C", "F"].contains(&o["unit"].as_str().unwrap()), "{args}");
    args
}

#[test]
fn a_forced_tool_call_round_trips() {
    let (served, tok) = serve_tools();
    let body = json!({"messages": user(), "tools": [weather_tool(), time_tool()], "tool_choice": named("get_weather"),
                      "max_tokens": 80, "seed": 3, "logprobs": true});
    let v = ok(&served, &body);
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let message = &choice["message"];
    assert_eq!(message["content"], Value::Null, "{v}");
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!((&calls[0]["type"], &calls[0]["function"]["name"]), (&json!("function"), &json!("get_weather")));
    assert!(calls[0]["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{v}");
    check_weather(calls[0]["function"]["arguments"].as_str().expect("arguments string"));
    // Log-probs are those of the masked distribution: forced tokens are certain.
    let lps: Vec<f64> =
        choice["logprobs"]["content"].as_array().unwrap().iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
    assert!(lps.iter().all(|&lp| lp <= 0.0) && lps.contains(&0.0), "{lps:?}");

    // The conversation goes on: the assistant's call and the tool's answer are rendered by the template.
    let messages = json!([
        user()[0],
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18 degrees and sunny"},
    ]);
    let follow = json!({"messages": messages, "tools": [weather_tool()], "max_tokens": 8, "temperature": 0});
    let v = ok(&served, &follow);
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let mut rendered_call = calls[0].clone();
    rendered_call["function"]["arguments"] =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    let local = json!([user()[0], {"role": "assistant", "content": null, "tool_calls": [rendered_call]},
                       {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18 degrees and sunny"}]);
    let text = tok.render_chat(local.as_array().unwrap(), Some(&[weather_tool()]), true).unwrap();
    assert!(text.contains("<tool_response>\n18 degrees and sunny\n</tool_response>"), "{text}");
    assert!(
        text.contains("\"name\": \"get_weather\", \"description\": \"The weather in a city.\""),
        "tojson as Python's: {text}"
    );
    assert!(text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "), "{text}");
    assert_eq!(
        v["usage"]["prompt_tokens"],
        tok.encode(&text, false).unwrap().len(),
        "the server renders as the template does"
    );
}

#[test]
fn required_calls_stream_and_auto_leaves_plain_text_alone() {
    let (served, _) = serve_tools();
    let tools = json!([weather_tool(), time_tool()]);
    let body = json!({"messages": user(), "tools": tools, "tool_choice": "required", "max_tokens": 400, "n": 3,
                      "seed": 9});
    let v = ok(&served, &body);
    let mut whole = Vec::new();
    for choice in v["choices"].as_array().unwrap() {
        let calls = choice["message"]["tool_calls"].as_array().unwrap_or_else(|| panic!("{choice}"));
        assert!(!calls.is_empty() && choice["finish_reason"] == "tool_calls", "{choice}");
        for c in calls {
            match c["function"]["name"].as_str().unwrap() {
                "get_weather" => drop(check_weather(c["function"]["arguments"].as_str().unwrap())),
                "get_time" => assert!(c["function"]["arguments"].as_str().unwrap().contains("\"zone\"")),
                other => panic!("a call to {other}"),
            }
        }
        whole.push(calls.iter().map(|c| c["function"].clone()).collect::<Vec<_>>());
    }
    // Streamed with the same seed: no content, the same calls in one delta per choice, then tool_calls.
    let (_, events) = served.stream_at("/v1/chat/completions", &body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut streamed = vec![Vec::new(); 3];
    let mut finishes = vec![Value::Null; 3];
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        let choice = &chunk["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        assert!(choice["delta"]["content"].as_str().is_none_or(str::is_empty), "content streamed: {chunk}");
        if let Some(calls) = choice["delta"]["tool_calls"].as_array() {
            for (k, c) in calls.iter().enumerate() {
                assert_eq!(c["index"], k);
                streamed[i].push(c["function"].clone());
            }
        }
        if !choice["finish_reason"].is_null() {
            finishes[i] = choice["finish_reason"].clone();
        }
    }
    assert_eq!(streamed, whole);
    assert!(finishes.iter().all(|f| f == "tool_calls"), "{finishes:?}");

    // auto: the random model writes no markup, so its text is plain content, and tools are in the prompt.
    let auto = ok(&served, &json!({"messages": user(), "tools": tools, "max_tokens": 12, "temperature": 0}));
    let bare = ok(&served, &json!({"messages": user(), "max_tokens": 12, "temperature": 0}));
    assert!(auto["choices"][0]["message"]["content"].is_string(), "{auto}");
    assert!(auto["choices"][0]["message"].get("tool_calls").is_none(), "{auto}");
    assert_ne!(auto["choices"][0]["finish_reason"], "tool_calls");
    assert!(auto["usage"]["prompt_tokens"].as_u64() > bare["usage"]["prompt_tokens"].as_u64(), "tools rendered");
}

/// A schema every value of which is bounded, so even a random model completes it within the budget.
fn bounded_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "answer": {"type": "integer", "minimum": 0, "maximum": 999},
            "colour": {"enum": ["red", "green"]},
            "sure": {"type": "boolean"},
        },
        "required": ["answer", "colour", "sure"],
        "additionalProperties": false,
    })
}

#[test]
fn response_format_constrains_the_output() {
    let (served, _) = serve_tools();
    let format =
        json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": bounded_schema(), "strict": true}});
    let body = json!({"messages": user(), "response_format": format, "max_tokens": 300, "n": 4, "seed": 1});
    let v = ok(&served, &body);
    let mut texts = Vec::new();
    for choice in v["choices"].as_array().unwrap() {
        assert_eq!(choice["finish_reason"], "stop", "{choice}");
        let text = choice["message"]["content"].as_str().unwrap();
        let out: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        assert!(out["answer"].as_u64().is_some_and(|a| a <= 999) && out["sure"].is_boolean(), "{out}");
        assert!(["red", "green"].contains(&out["colour"].as_str().unwrap()), "{out}");
        assert_eq!(out.as_object().unwrap().len(), 3, "{out}");
        texts.push(text.to_owned());
    }
    // Streamed, the same text for the same seed.
    let (_, events) = served.stream_at(
        "/v1/chat/completions",
        &json!({"messages": user(), "response_format": format,
                                                                       "max_tokens": 300, "seed": 1}),
    );
    let content: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(content, texts[0]);
    // json_object: the output starts an object (a random model's free-form strings may not end in budget).
    let v = ok(
        &served,
        &json!({"messages": user(), "response_format": {"type": "json_object"}, "max_tokens": 30,
                                "temperature": 0}),
    );
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.trim_start().starts_with('{'), "{text:?}");
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(text).unwrap().is_object(), "{text:?}");
    }
}

#[test]
fn bad_tools_formats_and_combinations_are_refused() {
    let (served, _) = serve_tools();
    let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": bounded_schema()}});
    let cases = [
        (
            json!({"messages": user(), "tools": [weather_tool()], "tool_choice": named("get_weather"),
                "response_format": schema}),
            "response_format",
        ),
        (json!({"messages": user(), "tools": [weather_tool()], "tool_choice": named("nope")}), "tool_choice"),
        (json!({"messages": user(), "tool_choice": "required"}), "tool_choice"),
        (json!({"messages": user(), "tools": [{"type": "function"}]}), "tools"),
        (
            json!({"messages": user(), "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
        ),
        (
            json!({"messages": user(), "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"type": "object", "properties": {"a": {"type": "colour"}}}}}}),
            "response_format",
        ),
        (
            json!({"messages": [user()[0], {"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]}]}),
            "messages",
        ),
        (
            json!({"messages": [user()[0], {"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]}),
            "messages",
        ),
    ];
    for (body, param) in cases {
        refused(&served, &body, param);
    }
    // A tool_choice of none with tools is plain chat.
    let v =
        ok(&served, &json!({"messages": user(), "tools": [weather_tool()], "tool_choice": "none", "max_tokens": 4}));
    assert!(v["choices"][0]["message"]["content"].is_string());
}
