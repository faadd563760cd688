//! Log-probs placed in the text they belong to, and written in both of OpenAI's shapes.
//!
//! [`Aligner`] walks a choice's tokens along its text as the text settles: each token gets its exact bytes
//! in the text (so a character split over tokens is rebuilt byte for byte, and the token a stop string
//! began in keeps only its bytes before the stop; tokens after it are dropped), the whole characters it
//! completes (`text`: these concatenate to the text exactly, which the legacy `tokens` list needs) and its
//! character offset (`text_offset`). Where the tokens' bytes stop spelling the text (a special token
//! decoded away inside it), the rest are given as each decodes alone.
//!
//! - chat (`logprobs.content`): `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}` per
//!   token, the alternatives most likely first.
//! - completions (legacy): `{tokens, token_logprobs, top_logprobs, text_offset}`, where each
//!   `top_logprobs` entry is a `{token: logprob}` dict of the k most likely tokens plus the sampled one
//!   (so up to k + 1, as OpenAI documents), and an echoed prompt's first token has null log-probs.
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

/// One token of a choice's text with its log-probs, placed in the text.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub id: u32,
    /// None for a prompt's first token, which nothing comes before.
    pub logprob: Option<f32>,
    /// The alternatives asked for, most likely first.
    pub top: Vec<(u32, f32)>,
    /// Its bytes in the text.
    pub bytes: Vec<u8>,
    /// The characters of the text it completes.
    pub text: String,
    /// Characters of the choice's text before `text`.
    pub offset: usize,
}

/// Where the walk along a text stands.
#[derive(Default)]
pub struct Aligner {
    /// Tokens placed so far.
    placed: usize,
    /// Bytes of the text they cover.
    bytes: usize,
    /// The character boundary at or before `bytes`, and the characters before it.
    floor: usize,
    chars: usize,
    /// The tokens stopped spelling the text.
    lost: bool,
}

/// A token placed by [`Aligner::place`]: its index and where it lies.
pub struct Placed {
    pub index: usize,
    pub bytes: Vec<u8>,
    pub text: String,
    pub offset: usize,
}

impl Aligner {
    /// Places the tokens of `ids` not placed yet that lie within the settled `text[..settled]`; with `last`
    /// (the text is final), every remaining one, cut where the text ends, and none past it.
    pub fn place(&mut self, tok: &Tokenizer, ids: &[u32], text: &str, settled: usize, last: bool) -> Vec<Placed> {
        let t = text.as_bytes();
        let mut out = Vec::new();
        while let Some(&id) = ids.get(self.placed) {
            if !self.lost {
                let mut b = tok.token_bytes(id).unwrap_or_default();
                // SentencePiece decoders drop the space that begins the first piece.
                if self.placed == 0 && b.first() == Some(&b' ') && t.first() != Some(&b' ') {
                    b.remove(0);
                }
                let start = self.bytes;
                if last {
                    if start >= t.len() {
                        break;
                    }
                    b.truncate(t.len() - start);
                } else if start + b.len() > settled {
                    break;
                }
                if t.get(start..start + b.len()) == Some(&b[..]) {
                    let end = start + b.len();
                    let floor = (0..=end).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                    let piece = text[self.floor..floor].to_owned();
                    out.push(Placed { index: self.placed, bytes: b, offset: self.chars, text: piece });
                    self.chars += text[self.floor..floor].chars().count();
                    (self.bytes, self.floor) = (end, floor);
                    self.placed += 1;
                    continue;
                }
                self.lost = true;
            }
            if !last {
                break;
            }
            let alone = tok.decode(&[id], false).unwrap_or_default();
            out.push(Placed { index: self.placed, bytes: alone.clone().into_bytes(), offset: self.chars, text: alone });
            self.chars += out.last().map_or(0, |p| p.text.chars().count());
            self.placed += 1;
        }
        out
    }
}

/// `tokens` placed along `text` as a whole (a final text, e.g. an echoed prompt), with their log-probs.
pub fn place_all(
    tok: &Tokenizer,
    ids: &[u32],
    text: &str,
    scores: impl Fn(usize) -> (Option<f32>, Vec<(u32, f32)>),
) -> Vec<Token> {
    let mut aligner = Aligner::default();
    aligner
        .place(tok, ids, text, text.len(), true)
        .into_iter()
        .map(|p| {
            let (logprob, top) = scores(p.index);
            Token { id: ids[p.index], logprob, top, bytes: p.bytes, text: p.text, offset: p.offset }
        })
        .collect()
}

/// A chat choice's `logprobs.content` entries.
pub fn chat_content(tok: &Tokenizer, tokens: &[Token]) -> Vec<Value> {
    let alternative = |&(id, logprob): &(u32, f32)| {
        let bytes = tok.token_bytes(id).unwrap_or_default();
        json!({"token": String::from_utf8_lossy(&bytes), "logprob": logprob, "bytes": bytes})
    };
    tokens
        .iter()
        .map(|t| {
            json!({
                "token": String::from_utf8_lossy(&t.bytes),
                "logprob": t.logprob,
                "bytes": t.bytes,
                "top_logprobs": t.top.iter().map(alternative).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// A text choice's legacy `logprobs` object (of all its tokens, or of a streamed piece's).
pub fn legacy(tok: &Tokenizer, tokens: &[Token]) -> Value {
    let dict = |t: &Token| -> Value {
        let Some(logprob) = t.logprob else { return Value::Null };
        let mut d = Map::new();
        for &(id, lp) in &t.top {
            // The sampled token under its name in `tokens`, so the two can be compared.
            let key = match id == t.id {
                true => t.text.clone(),
                false => String::from_utf8_lossy(&tok.token_bytes(id).unwrap_or_default()).into_owned(),
            };
            d.entry(key).or_insert(json!(lp));
        }
        d.entry(t.text.clone()).or_insert(json!(logprob));
        Value::Object(d)
    };
    json!({
        "tokens": tokens.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(dict).collect::<Vec<_>>(),
        "text_offset": tokens.iter().map(|t| t.offset).collect::<Vec<_>>(),
    })
}
