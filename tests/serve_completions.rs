//! `POST /v1/completions` end to end: the real binary serves the tiny random chat model, and its answers are
//! checked over HTTP against generation and scoring run in this process on the same model: plain text,
//! every prompt shape, `echo` with prompt log-probs (pure scoring at `max_tokens: 0`, as lm-eval-harness
//! asks), `logprobs: k` alternatives in OpenAI's legacy shape, `n` with seeds, streaming, and the errors.
mod common;

use common::served::Served;
use mappa::cpu::CpuBackend;
use mappa::engine::{generate, FinishReason, Generation};
use mappa::model::{Model, Packed};
use mappa::sample::SamplingParams;
use mappa::tokenizer::Tokenizer;
use serde_json::{json, Value};

const PROMPT: &str = "The capital of France is";

/// The served model, loaded in this process from the same directory.
struct Reference {
    model: CpuBackend,
    tok: Tokenizer,
}

impl Reference {
    fn load(served: &Served) -> Reference {
        let loaded = mappa::loader::load(&served.model).expect("loading the served model");
        let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config).expect("tokenizer");
        Reference { model: CpuBackend::new(&loaded).expect("CPU model"), tok }
    }

    fn ids(&self, text: &str) -> Vec<u32> {
        self.tok.encode(text, true).expect("encode")
    }

    fn generate(&self, prompt: &[u32], max_new: usize, params: SamplingParams) -> Generation {
        generate(&self.model, prompt, max_new, params, self.tok.stop_ids(), |_| Ok(())).expect("generate")
    }

    /// The text of a generation, without its stop token.
    fn text(&self, g: &Generation) -> String {
        let content = match g.finish {
            FinishReason::Stop => &g.tokens[..g.tokens.len() - 1],
            FinishReason::Length => &g.tokens[..],
        };
        self.tok.decode(content, true).expect("decode")
    }

    /// Each token of `ids` after the first, scored given the ones before, with `k` alternatives.
    fn score(&self, ids: &[u32], k: usize) -> (Vec<f32>, Vec<Vec<(u32, f32)>>) {
        let positions: Vec<usize> = (0..ids.len() - 1).collect();
        let packed = Packed { tokens: ids, seq_lens: &[ids.len()], positions: &positions };
        self.model.sequence_top_logprobs(packed, 1.0, k).expect("scoring")
    }
}

fn complete(served: &Served, body: &Value) -> Value {
    let (status, v) = served.post("/v1/completions", &body.to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion", "{v}");
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")), "{v}");
    v
}

fn f32s(v: &Value) -> Vec<Option<f32>> {
    v.as_array().expect("a list").iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
}

/// Checks a legacy `logprobs` object against its choice's text: the tokens spell the text, each offset is
/// where its token starts (in characters), every list has one entry per token, and each `top_logprobs`
/// dict holds between k and k + 1 entries with the token's own value among them and none above the best.
fn check_legacy(lp: &Value, text: &str, k: usize) -> usize {
    let tokens: Vec<&str> = lp["tokens"].as_array().expect("tokens").iter().map(|t| t.as_str().expect("str")).collect();
    assert_eq!(tokens.concat(), text, "the tokens spell the text");
    let offsets: Vec<u64> =
        lp["text_offset"].as_array().expect("offsets").iter().map(|o| o.as_u64().unwrap()).collect();
    let mut at = 0;
    for (t, &o) in tokens.iter().zip(&offsets) {
        assert_eq!(o, at as u64, "offset of {t:?} in {text:?}");
        at += t.chars().count();
    }
    let logprobs = f32s(&lp["token_logprobs"]);
    let tops = lp["top_logprobs"].as_array().expect("top_logprobs");
    assert_eq!((offsets.len(), logprobs.len(), tops.len()), (tokens.len(), tokens.len(), tokens.len()), "{lp}");
    for ((t, lp), top) in tokens.iter().zip(&logprobs).zip(tops) {
        let Some(lp) = lp else {
            assert!(top.is_null(), "no alternatives without a log-prob");
            continue;
        };
        assert!(*lp <= 0.0);
        let top = top.as_object().expect("a dict");
        assert!(top.len() >= k.max(1) && top.len() <= k + 1, "{k} alternatives and the token: {top:?}");
        assert_eq!(top.get(*t).and_then(Value::as_f64).map(|f| f as f32), Some(*lp), "the token itself, {t:?}");
        let best = top.values().filter_map(Value::as_f64).fold(f64::NEG_INFINITY, f64::max);
        assert!(best as f32 >= *lp);
    }
    tokens.len()
}

#[test]
fn text_completions_match_in_process_generation_for_every_prompt_shape() {
    let served = Served::start(&[]);
    let r = Reference::load(&served);
    let ids = r.ids(PROMPT);
    let g = r.generate(&ids, 12, SamplingParams::default());
    let want = r.text(&g);
    assert!(!want.is_empty());

    let v = complete(&served, &json!({"model": served.name, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}));
    let choice = &v["choices"][0];
    assert_eq!((&choice["text"], &choice["index"], &choice["logprobs"]), (&json!(want), &json!(0), &Value::Null));
    assert_eq!(choice["finish_reason"], if g.finish == FinishReason::Stop { "stop" } else { "length" });
    let (p, c) = (ids.len(), g.tokens.len());
    assert_eq!(v["usage"], json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}));

    // Token ids, a batch of strings and a batch of id lists: choices indexed across prompts.
    let other = "Once upon a time";
    let want_other = r.text(&r.generate(&r.ids(other), 12, SamplingParams::default()));
    let by_ids = complete(&served, &json!({"prompt": ids, "max_tokens": 12, "temperature": 0}));
    assert_eq!(by_ids["choices"][0]["text"], want.as_str());
    for prompt in [json!([PROMPT, other]), json!([ids, r.ids(other)])] {
        let v = complete(&served, &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "n": 2}));
        let texts: Vec<&str> = v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
        assert_eq!(texts, [&want, &want, &want_other, &want_other], "{prompt}");
        let indices: Vec<u64> = v["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
        assert_eq!(indices, [0, 1, 2, 3]);
        assert_eq!(v["usage"]["prompt_tokens"], ids.len() + r.ids(other).len(), "each prompt counts once");
    }

    // OpenAI's default budget is 16 tokens.
    let long = complete(&served, &json!({"prompt": "Count: one two three", "temperature": 0}));
    let g16 = r.generate(&r.ids("Count: one two three"), 16, SamplingParams::default());
    assert_eq!(long["usage"]["completion_tokens"], g16.tokens.len());
}

/// lm-eval-harness's log-likelihood request: the context and continuation as one prompt, `echo`, no new
/// tokens, `logprobs: 1`: every prompt token's log-prob given those before (the first null), and its most
/// likely alternative, the numbers scoring the same ids in this process gives.
#[test]
fn echo_with_max_tokens_0_scores_the_prompt() {
    let served = Served::start(&[]);
    let r = Reference::load(&served);
    let text = "Paris is the capital of France. Ünïcödé → ok";
    let ids = r.ids(text);
    let (logp, top) = r.score(&ids, 1);
    for prompt in [json!(text), json!(ids)] {
        let body = json!({"prompt": prompt, "echo": true, "max_tokens": 0, "logprobs": 1, "temperature": 0});
        let v = complete(&served, &body);
        let choice = &v["choices"][0];
        assert_eq!(choice["text"], r.tok.decode(&ids, false).unwrap(), "the echoed prompt");
        assert_eq!(choice["text"], text, "a byte-level tokenizer without BOS echoes the string itself");
        assert_eq!(choice["finish_reason"], "length");
        let lp = &choice["logprobs"];
        assert_eq!(check_legacy(lp, text, 1), ids.len(), "one entry per prompt token");
        let got = f32s(&lp["token_logprobs"]);
        assert_eq!(got[0], None, "the first token has nothing before it");
        let want: Vec<Option<f32>> = std::iter::once(None).chain(logp.iter().copied().map(Some)).collect();
        assert_eq!(got, want, "the log-probs of scoring in process");
        for (i, alt) in top.iter().enumerate() {
            let dict = lp["top_logprobs"][i + 1].as_object().unwrap();
            let name = String::from_utf8_lossy(&r.tok.token_bytes(alt[0].0).unwrap()).into_owned();
            let name = if alt[0].0 == ids[i + 1] { lp["tokens"][i + 1].as_str().unwrap().to_owned() } else { name };
            assert_eq!(dict.get(&name).and_then(Value::as_f64).map(|f| f as f32), Some(alt[0].1), "position {}", i + 1);
        }
        assert_eq!(v["usage"], json!({"prompt_tokens": ids.len(), "completion_tokens": 0, "total_tokens": ids.len()}));
    }

    // Echo followed by generated text: the prompt's entries, then the completion's, offsets running on.
    let body = json!({"prompt": PROMPT, "echo": true, "max_tokens": 6, "logprobs": 2, "temperature": 0});
    let v = complete(&served, &body);
    let prompt_ids = r.ids(PROMPT);
    let g = r.generate(&prompt_ids, 6, SamplingParams::default());
    let text = format!("{PROMPT}{}", r.text(&g));
    let choice = &v["choices"][0];
    assert_eq!(choice["text"], text);
    let n = check_legacy(&choice["logprobs"], &text, 2);
    let content = g.tokens.len() - usize::from(g.finish == FinishReason::Stop);
    assert_eq!(n, prompt_ids.len() + content);
    let got = f32s(&choice["logprobs"]["token_logprobs"]);
    let generated: Vec<Option<f32>> = g.logprobs[..content].iter().copied().map(Some).collect();
    assert_eq!(got[prompt_ids.len()..], generated[..], "the generated tokens' log-probs");

    // Echo without logprobs: the text only.
    let v = complete(&served, &json!({"prompt": PROMPT, "echo": true, "max_tokens": 0}));
    assert_eq!((&v["choices"][0]["text"], &v["choices"][0]["logprobs"]), (&json!(PROMPT), &Value::Null));
}

/// `logprobs: 5`: five alternatives (and the sampled token) per generated token; greedy takes the best.
#[test]
fn logprobs_5_gives_alternatives_and_n_samples_use_their_seeds() {
    let served = Served::start(&[]);
    let r = Reference::load(&served);
    let ids = r.ids(PROMPT);
    let v = complete(&served, &json!({"prompt": PROMPT, "max_tokens": 10, "logprobs": 5, "temperature": 0}));
    let choice = &v["choices"][0];
    let lp = &choice["logprobs"];
    let text = choice["text"].as_str().unwrap();
    let n = check_legacy(lp, text, 5);
    let g = r.generate(&ids, 10, SamplingParams { top_logprobs: 5, ..SamplingParams::default() });
    assert_eq!(n, g.tokens.len() - usize::from(g.finish == FinishReason::Stop));
    for i in 0..n {
        let dict = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(dict.len(), 5, "greedy: the sampled token is among the 5 best");
        let best = dict.values().filter_map(Value::as_f64).fold(f64::NEG_INFINITY, f64::max) as f32;
        assert_eq!(f32s(&lp["token_logprobs"])[i], Some(best), "greedy takes the most likely token");
        let mut want: Vec<f32> = g.top_logprobs[i].iter().map(|a| a.1).collect();
        let mut got: Vec<f32> = dict.values().map(|x| x.as_f64().unwrap() as f32).collect();
        want.sort_by(f32::total_cmp);
        got.sort_by(f32::total_cmp);
        assert_eq!(got, want, "token {i}: the engine's alternatives");
    }

    // n = 2 with a seed: choice j samples with seed + j, reproducibly.
    let body = json!({"prompt": PROMPT, "max_tokens": 10, "n": 2, "seed": 5, "temperature": 1.0, "logprobs": 0});
    let v = complete(&served, &body);
    let texts: Vec<String> = (0..2).map(|j| v["choices"][j]["text"].as_str().unwrap().to_owned()).collect();
    for (j, text) in texts.iter().enumerate() {
        let params = SamplingParams { temperature: 1.0, seed: 5 + j as u64, ..SamplingParams::default() };
        assert_eq!(text, &r.text(&r.generate(&ids, 10, params)), "choice {j}");
        check_legacy(&v["choices"][j]["logprobs"], text, 0);
    }
    assert_ne!(texts[0], texts[1]);
    assert_eq!(complete(&served, &body)["choices"], v["choices"], "seeded choices repeat");
}

/// Streamed: the same text and, piece by piece, the same log-probs as the whole answer.
#[test]
fn streaming_gives_the_text_and_log_probs_of_the_whole_answer() {
    let served = Served::start(&[]);
    for body in [
        json!({"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "logprobs": 3}),
        json!({"prompt": [PROMPT, "Once upon"], "max_tokens": 8, "n": 2, "seed": 3, "logprobs": 2, "echo": true,
               "stream_options": {"include_usage": true}}),
    ] {
        let whole = complete(&served, &body);
        let (head, events) = served.stream_at("/v1/completions", &body);
        assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let choices = whole["choices"].as_array().unwrap();
        let mut texts = vec![String::new(); choices.len()];
        let mut lists: Vec<Value> =
            vec![json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}); choices.len()];
        let mut finish = vec![Value::Null; choices.len()];
        let mut usage = Value::Null;
        for e in &events[..events.len() - 1] {
            let chunk: Value = serde_json::from_str(e).unwrap();
            assert_eq!(chunk["object"], "text_completion", "{chunk}");
            if !chunk["usage"].is_null() {
                usage = chunk["usage"].clone();
            }
            for c in chunk["choices"].as_array().unwrap() {
                let i = c["index"].as_u64().unwrap() as usize;
                assert!(finish[i].is_null(), "a chunk after choice {i} finished");
                texts[i] += c["text"].as_str().unwrap();
                finish[i] = c["finish_reason"].clone();
                if let Some(lp) = c["logprobs"].as_object() {
                    for (k, list) in lp {
                        lists[i][k].as_array_mut().unwrap().extend(list.as_array().unwrap().iter().cloned());
                    }
                }
            }
        }
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(texts[i], c["text"].as_str().unwrap(), "choice {i}");
            assert_eq!(lists[i], c["logprobs"], "choice {i}: the streamed log-probs");
            assert_eq!(finish[i], c["finish_reason"]);
        }
        if body.get("stream_options").is_some() {
            assert_eq!(usage, whole["usage"]);
        }
    }
}

#[test]
fn completions_validate_as_openai_does() {
    let served = Served::start(&[]);
    let cases = [
        (json!({"max_tokens": 4}), "prompt", "invalid_value"),
        (json!({"prompt": []}), "prompt", "invalid_value"),
        (json!({"prompt": [[]]}), "prompt", "invalid_value"),
        (json!({"prompt": [1, 2, 49152]}), "prompt", "invalid_value"),
        (json!({"prompt": [1, -2]}), "prompt", "invalid_value"),
        (json!({"prompt": [["a"]]}), "prompt", "invalid_value"),
        (json!({"prompt": {"text": "a"}}), "prompt", "invalid_value"),
        (json!({"prompt": "hello ".repeat(300)}), "prompt", "context_length_exceeded"),
        (json!({"prompt": "a", "logprobs": 21}), "logprobs", "invalid_value"),
        (json!({"prompt": "a", "max_tokens": 1_000_000}), "max_tokens", "invalid_value"),
        (json!({"prompt": "a", "temperature": 2.5}), "temperature", "invalid_value"),
        (json!({"prompt": "a", "n": 0}), "n", "invalid_value"),
        (json!({"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}), "stop", "invalid_value"),
        (json!({"prompt": "a", "suffix": "end"}), "suffix", "unsupported"),
        (json!({"prompt": "a", "best_of": 3}), "best_of", "unsupported"),
        (json!({"prompt": "a", "presence_penalty": 1}), "presence_penalty", "unsupported"),
        (json!({"prompt": "a", "logit_bias": {"1": 2}}), "logit_bias", "unsupported"),
        (json!({"prompt": "a", "model": "gpt-3.5-turbo-instruct"}), "model", "model_not_found"),
    ];
    for (body, param, code) in cases {
        let (status, v) = served.post("/v1/completions", &body.to_string());
        let want = if code == "model_not_found" { 404 } else { 400 };
        assert_eq!(status, want, "{body}: {v}");
        assert_eq!((&v["error"]["param"], &v["error"]["code"]), (&json!(param), &json!(code)), "{body}: {v}");
    }
    let (status, v) = served.post("/v1/completions", &json!({"prompt": "a", "max_tokens": -1}).to_string());
    assert_eq!((status, &v["error"]["code"]), (400, &json!("invalid_request")), "{v}");
    // Neutral values pass; a stop string cuts the text.
    let ok =
        json!({"prompt": "a", "max_tokens": 2, "suffix": "", "best_of": 1, "presence_penalty": 0, "logit_bias": {}});
    complete(&served, &ok);
    let greedy = complete(&served, &json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0}));
    let text = greedy["choices"][0]["text"].as_str().unwrap().to_owned();
    if let Some(stop) = text.get(text.len() / 2..).and_then(|t| t.get(..2)).filter(|s| !s.trim().is_empty()) {
        let cut = complete(&served, &json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stop": stop}));
        assert_eq!(cut["choices"][0]["text"], &text[..text.find(stop).unwrap()]);
        assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    }
    let response = served.agent.get(&served.url("/v1/completions")).call().expect("GET");
    assert_eq!(response.status().as_u16(), 405);
}
