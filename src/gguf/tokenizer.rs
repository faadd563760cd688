//! Builds a Hugging Face `tokenizer.json` (and the chat template and special tokens) from GGUF metadata.
//!
//! GGUF files carry the tokenizer as llama.cpp needs it: the vocabulary, the merges, a token type per token
//! and the *name* of a pre-tokenizer (`tokenizer.ggml.pre`), whose regexes live in llama.cpp's source. We
//! rebuild the `tokenizer.json` the original checkpoint shipped, so GGUF and safetensors models go through
//! the same `tokenizers` code. Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is supported; anything
//! else is an error naming what the file holds and what we support.
use super::value::{Metadata, Value};
use crate::tokenizer::TokenizerSpec;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};
use std::str::FromStr;

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";
const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL` and `LLAMA_TOKEN_TYPE_USER_DEFINED`: the tokens HF keeps as
/// `added_tokens`, matched whole in the text before pre-tokenization.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The split regexes of the Llama 3 and Qwen2 `tokenizer.json` files (they differ only in how digits group).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` names we know, for error messages.
const SUPPORTED_PRE: &str =
    "smollm, starcoder, refact, gpt-2, gpt2, default, llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen";

pub fn from_metadata(meta: &Metadata) -> Result<TokenizerSpec> {
    let model = required(meta, MODEL, "a string", Value::as_str)?;
    if model != "gpt2" {
        bail!("{MODEL} {model:?} is not supported: only \"gpt2\" (byte-level BPE) is");
    }
    let pre = pre_tokenization(required(meta, PRE, "a string", Value::as_str)?)?;

    let tokens = required(meta, TOKENS, "an array", Value::as_array)?
        .iter()
        .enumerate()
        .map(|(i, v)| v.as_str().ok_or_else(|| anyhow!("{TOKENS}[{i}] is not a string")))
        .collect::<Result<Vec<_>>>()?;
    let types = required(meta, TOKEN_TYPE, "an array", Value::as_array)?;
    if types.len() != tokens.len() {
        bail!("{TOKEN_TYPE} has {} entries but {TOKENS} has {}", types.len(), tokens.len());
    }

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added_tokens = Vec::new();
    for (id, (&token, ty)) in tokens.iter().zip(types).enumerate() {
        // A repeated string would silently shadow one of the ids (llama.cpp refuses such files too).
        if let Some(first) = vocab.insert(token.to_owned(), id.into()) {
            bail!("{TOKENS} holds {token:?} twice (ids {first} and {id})");
        }
        let ty = ty.as_i64().ok_or_else(|| anyhow!("{TOKEN_TYPE}[{id}] is not an integer"))?;
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            let special = ty == TOKEN_TYPE_CONTROL;
            // HF's defaults for an added token: only non-special ones match against normalized text.
            added_tokens.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": !special, "special": special,
            }));
        }
    }

    // Byte-level tokens never hold a raw space (it is mapped to 'Ġ'), so the first space separates the pair.
    let merges = required(meta, MERGES, "an array", Value::as_array)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let pair = v.as_str().and_then(|m| m.split_once(' '));
            pair.map(|(a, b)| json!([a, b])).ok_or_else(|| anyhow!("{MERGES}[{i}] is not a string \"left right\""))
        })
        .collect::<Result<Vec<_>>>()?;

    let token_at = |key: &str| -> Result<Option<String>> {
        let Some(id) = optional(meta, key, "a non-negative integer", Value::as_u64)? else {
            return Ok(None);
        };
        let token = usize::try_from(id).ok().and_then(|i| tokens.get(i));
        let token = token.ok_or_else(|| anyhow!("{key} {id} is out of range ({} tokens)", tokens.len()))?;
        Ok(Some(token.to_string()))
    };
    let bos_token = token_at(BOS_ID)?;
    let eos_token = token_at(EOS_ID)?;
    let add_bos_token = optional(meta, ADD_BOS, "a bool", Value::as_bool)?.unwrap_or(false);
    let post_processor = if add_bos_token {
        let bos = bos_token.as_deref().ok_or_else(|| anyhow!("{ADD_BOS} is true but there is no {BOS_ID}"))?;
        bos_template(bos, vocab[bos].clone())
    } else {
        Json::Null
    };

    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": pre.normalizer,
        "pre_tokenizer": pre.pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level(true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": pre.ignore_merges, "vocab": vocab, "merges": merges,
        },
    })
    .to_string();
    tokenizers::Tokenizer::from_str(&json)
        .map_err(|e| anyhow!(e))
        .context("the tokenizer.json built from the GGUF metadata does not load")?;

    Ok(TokenizerSpec {
        tokenizer_json: json,
        chat_template: optional(meta, CHAT_TEMPLATE, "a string", Value::as_str)?.map(str::to_owned),
        bos_token,
        eos_token,
        add_bos_token,
    })
}

/// What `tokenizer.json` does before the BPE model, for one `tokenizer.ggml.pre` name.
struct PreTokenization {
    normalizer: Json,
    pre_tokenizer: Json,
    /// Whether a word already in the vocabulary skips the merges (Llama 3's tokenizer sets this).
    ignore_merges: bool,
}

/// Mirrors the `tokenizer.json` of the model family each name stands for in llama.cpp's `llama-vocab.cpp`.
fn pre_tokenization(pre: &str) -> Result<PreTokenization> {
    let plain = |pre_tokenizer| PreTokenization { normalizer: Json::Null, pre_tokenizer, ignore_merges: false };
    Ok(match pre {
        // Every digit on its own, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" => plain(json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        })),
        "gpt-2" | "gpt2" | "default" => plain(byte_level(true)),
        "llama-bpe" | "llama3" | "llama-v3" => {
            PreTokenization { ignore_merges: true, ..plain(split_then_byte_level(LLAMA3_REGEX)) }
        }
        "qwen2" | "deepseek-r1-qwen" => {
            PreTokenization { normalizer: json!({"type": "NFC"}), ..plain(split_then_byte_level(QWEN2_REGEX)) }
        }
        _ => bail!("{PRE} {pre:?} is not supported (supported: {SUPPORTED_PRE})"),
    })
}

/// The byte-to-unicode mapping, optionally splitting with GPT-2's regex first.
fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_byte_level(regex: &str) -> Json {
    json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ],
    })
}

/// A post-processor that starts every sequence with the BOS token.
fn bos_template(bos: &str, id: Json) -> Json {
    let special = |type_id: u32| json!({"SpecialToken": {"id": bos, "type_id": type_id}});
    let sequence = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    json!({
        "type": "TemplateProcessing",
        "single": [special(0), sequence("A", 0)],
        "pair": [special(0), sequence("A", 0), special(1), sequence("B", 1)],
        "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}},
    })
}

/// `key` converted by `conv`: None when absent, an error naming the key when it holds another type.
fn optional<'a, T>(meta: &'a Metadata, key: &str, what: &str, conv: fn(&'a Value) -> Option<T>) -> Result<Option<T>> {
    meta.get(key).map(|v| conv(v).ok_or_else(|| anyhow!("{key} should be {what}, found {}", type_name(v)))).transpose()
}

fn required<'a, T>(meta: &'a Metadata, key: &str, what: &str, conv: fn(&'a Value) -> Option<T>) -> Result<T> {
    optional(meta, key, what, conv)?.ok_or_else(|| anyhow!("the GGUF metadata has no {key}"))
}

/// For error messages: the value itself could be a 100k-entry array.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Str(_) => "a string",
        Value::Array(_) => "an array",
        Value::Bool(_) => "a bool",
        Value::F32(_) | Value::F64(_) => "a float",
        _ => "an integer",
    }
}
