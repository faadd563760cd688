//! Tokenizer and chat template: encode/decode through the `tokenizers` crate, chat formatting through
//! minijinja running the model's own Jinja template (ChatML when the model has none), and the stop tokens.
use crate::config::ModelConfig;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// What a checkpoint says about its tokenizer, in the shape of Hugging Face's files: `tokenizer.json`
/// (verbatim) and the few fields of `tokenizer_config.json` we use. GGUF files are converted to this.
#[derive(Clone, Debug, Default)]
pub struct TokenizerSpec {
    /// The contents of a Hugging Face `tokenizer.json`.
    pub tokenizer_json: String,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Whether plain encoding starts with the BOS token.
    pub add_bos_token: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// Used when a model ships no template.
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Tokens that end an assistant turn in the common chat formats; one that the template writes is a stop token.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The chat template, compiled once (as "chat") in an environment set up as transformers renders.
    env: minijinja::Environment<'static>,
    /// The template's source.
    template: String,
    bos_token: String,
    eos_token: String,
    stop_ids: Vec<u32>,
}

impl Tokenizer {
    pub fn new(spec: &TokenizerSpec, config: &ModelConfig) -> Result<Tokenizer> {
        let inner = parse_tokenizer_json(&spec.tokenizer_json).context("invalid tokenizer.json")?;
        let template = spec.chat_template.clone().unwrap_or_else(|| CHATML.to_owned());
        let mut stop_ids = config.eos_token_ids.clone();
        let named_eos = spec.eos_token.iter().map(String::as_str);
        let turn_ends = END_OF_TURN.into_iter().filter(|t| template.contains(t));
        stop_ids.extend(named_eos.chain(turn_ends).filter_map(|t| inner.token_to_id(t)));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let mut env = crate::template::environment();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", python_tojson);
        env.add_template_owned("chat", template.clone()).context("chat template does not compile")?;
        let tok = Tokenizer {
            inner,
            template,
            bos_token: spec.bos_token.clone().unwrap_or_default(),
            eos_token: spec.eos_token.clone().unwrap_or_default(),
            env,
            stop_ids,
        };
        // Fail at load time, not at the first prompt, when the template does not compile or render.
        tok.apply_chat_template(&[ChatMessage::new("user", "hi")], true)
            .context("the model's chat template does not render")?;
        Ok(tok)
    }

    /// Token ids of `text`; `add_special` applies the tokenizer's post-processor (e.g. a BOS token).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(|e| anyhow!("tokenizer failed to encode: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| anyhow!("tokenizer failed to decode: {e}"))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The bytes token `id` stands for in decoded text: a special token's text, a byte-level BPE token's
    /// bytes, a SentencePiece byte token's byte, or a SentencePiece piece with `▁` as a space. None for an id
    /// outside the vocabulary. Unlike decoding the token alone, this keeps a part of a multi-byte character.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if let Some(t) = self.inner.get_added_tokens_decoder().get(&id) {
            return Some(t.content.clone().into_bytes());
        }
        let piece = self.inner.id_to_token(id)?;
        if let Some(tokenizers::decoders::DecoderWrapper::ByteLevel(_)) = self.inner.get_decoder() {
            return piece.chars().map(byte_level_byte).collect();
        }
        let byte = piece.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).filter(|h| h.len() == 2);
        match byte.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => Some(vec![b]),
            None => Some(piece.replace('\u{2581}', " ").into_bytes()),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokens that end generation: the config's eos ids, the tokenizer's eos token, and the end-of-turn
    /// marker the chat template writes.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The prompt text for `messages`, rendered by the model's template as transformers would
    /// (`trim_blocks` and `lstrip_blocks` on, Python string methods available).
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        self.env.get_template("chat")?.render(ctx).context("rendering the chat template")
    }

    /// Chat-formatted prompt ids. The template writes any special tokens itself, so none are added.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.encode(&self.apply_chat_template(messages, true)?, false)
    }

    /// [`Tokenizer::apply_chat_template`] for messages as JSON objects, in the shape transformers takes them
    /// (an assistant message's `tool_calls`, a `tool` message's `tool_call_id`, a null `content`), with the
    /// function `tools` the template may describe (None: no `tools` variable, as transformers' default).
    pub fn render_chat(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        // Without tools, `tools` stays undefined, as in `apply_chat_template`.
        let ctx = match tools {
            Some(tools) => minijinja::context! { tools => tools, ..ctx },
            None => ctx,
        };
        self.env.get_template("chat")?.render(ctx).context("rendering the chat template")
    }

    /// The chat template's source (the model's own, else the ChatML fallback).
    pub fn chat_template(&self) -> &str {
        &self.template
    }

    /// Whether `id` is a special added token (`<|im_end|>`, ...): text a grammar does not produce.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }
}

/// Jinja's `tojson` as transformers defines it for chat templates: Python's `json.dumps` with
/// `ensure_ascii=False` (", " and ": " separators, or one item per line with `indent`; keys in their order
/// unless `sort_keys`), not minijinja's HTML-safe compact form, so tool schemas reach the prompt as the
/// model saw them in training.
fn python_tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> Result<String, minijinja::Error> {
    let bad = |e: &dyn std::fmt::Display| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string());
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| bad(&e))?;
    let mut out = String::new();
    write_python_json(&mut out, &json, indent, sort_keys.unwrap_or(false), 0).map_err(|e| bad(&e))?;
    Ok(out)
}

fn write_python_json(
    out: &mut String,
    v: &serde_json::Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
) -> serde_json::Result<()> {
    use serde_json::Value;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_python_json(out, item, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(k)?);
                out.push_str(": ");
                write_python_json(out, item, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other)?),
    }
    Ok(())
}

/// `tokenizer.json` read by the `tokenizers` crate, after refusing what that crate would panic on rather than
/// reject: text that is not JSON (its decoder deserializer unwraps the parse error it meets), BPE merges it
/// cannot join (`check_bpe_merges`), and a template post-processor that names a special token it does not
/// define, or the second sequence (`$B`) in the single-sequence template (it indexes both without a check
/// when encoding).
fn parse_tokenizer_json(text: &str) -> Result<tokenizers::Tokenizer> {
    let json: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
    check_bpe_merges(&json["model"]).context("model.merges")?;
    let tokenizer: tokenizers::Tokenizer = text.parse().map_err(|e| anyhow!("{e}"))?;
    if let Some(p) = tokenizer.get_post_processor() {
        check_post_processor(p).context("post_processor")?;
    }
    Ok(tokenizer)
}

/// The `tokenizers` crate joins each BPE merge (a, b) in a buffer as long as the longest vocabulary entry,
/// after cutting `continuing_subword_prefix` off b, and slices both without a check (0.23: it panics on a
/// b shorter than the prefix, or a join longer than the buffer). A merge that does not start b with the
/// prefix, or whose join is longer than any token, can name no token anyway: refuse it here.
fn check_bpe_merges(model: &serde_json::Value) -> Result<()> {
    if model["type"] != "BPE" {
        return Ok(());
    }
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    let longest = model["vocab"].as_object().map_or(0, |v| v.keys().map(String::len).max().unwrap_or(0));
    for (i, merge) in model["merges"].as_array().into_iter().flatten().enumerate() {
        let (a, b) = match merge {
            serde_json::Value::String(m) => m.split_once(' ').unwrap_or((m, "")),
            serde_json::Value::Array(p) => {
                (p.first().and_then(|x| x.as_str()).unwrap_or(""), p.get(1).and_then(|x| x.as_str()).unwrap_or(""))
            }
            _ => continue, // the crate rejects it itself
        };
        ensure!(
            b.starts_with(prefix),
            "merge {i} ({a:?}, {b:?}) does not start its second token with the prefix {prefix:?}"
        );
        ensure!(
            a.len() + b.len() - prefix.len() <= longest,
            "merge {i} ({a:?}, {b:?}) joins to a token longer than any in the vocabulary"
        );
    }
    Ok(())
}

fn check_post_processor(p: &tokenizers::processors::PostProcessorWrapper) -> Result<()> {
    use tokenizers::processors::template::{Piece, Sequence};
    use tokenizers::processors::PostProcessorWrapper;
    match p {
        PostProcessorWrapper::Template(t) => {
            for (name, template) in [("single", &t.single), ("pair", t.get_pair())] {
                // A template's pieces are private; its serialised form is the list of them.
                let pieces: Vec<Piece> = serde_json::from_value(serde_json::to_value(template)?)?;
                for piece in pieces {
                    match piece {
                        Piece::SpecialToken { id, .. } if !t.get_special_tokens().0.contains_key(&id) => {
                            bail!("the {name} template uses special token {id:?}, which special_tokens lacks")
                        }
                        Piece::Sequence { id: Sequence::B, .. } if name == "single" => {
                            bail!("the single template uses the second sequence $B")
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        }
        PostProcessorWrapper::Sequence(seq) => (0..).map_while(|i| seq.get(i)).try_for_each(check_post_processor),
        _ => Ok(()),
    }
}

/// The byte a character of a byte-level BPE vocabulary stands for (GPT-2's alphabet): printable Latin-1 bytes
/// stand for themselves, and the n-th other byte is written as U+0100 + n.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let c = c as u32;
    if let Ok(b) = u8::try_from(c) {
        return printable(b).then_some(b);
    }
    let n = usize::try_from(c.checked_sub(256)?).ok()?;
    (0..=255u8).filter(|&b| !printable(b)).nth(n)
}

/// Turns a growing list of token ids into text pieces as they become printable: a multi-byte character
/// split over several tokens is held back until it is complete.
pub struct StreamDecoder {
    ids: Vec<u32>,
    printed: usize,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder { ids: Vec::new(), printed: 0 }
    }

    /// Adds a token; returns the newly printable text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.printed || !text.is_char_boundary(self.printed) {
            return Ok(String::new());
        }
        let piece = text[self.printed..].to_owned();
        self.printed = text.len();
        Ok(piece)
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}
