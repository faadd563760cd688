//! Grammars for constrained decoding (structured outputs), on llguidance (the grammar engine of vLLM,
//! SGLang and llama.cpp): JSON schemas, any JSON object, regular expressions and Lark grammars, compiled
//! against a model's vocabulary into [`Grammar`]s whose [`Grammar::constraint`]s the engine applies to a
//! sequence's samples ([`crate::engine::Constraint`], masked where sampling happens).
//!
//! [`Grammars`] is built once per tokenizer (a trie of every token's bytes; special tokens are marked, so
//! a grammar never produces them as text). A grammar's output ends where it is complete: the mask then
//! allows the sequence's stop tokens (only them once nothing can follow), so a constrained sequence stops
//! with a stop token the moment its output is whole, or runs out of budget.
//!
//! A local coach whose reply must end in a valid score line, for example, builds once
//! `grammars.regex(r"(?s:.{0,2000})\nPROCESS_SCORE: (10|[0-9])")` (at most 2000 characters, then the score
//! line, then a stop token: tests/constrained.rs checks it) and gives each request's sample
//! `grammar.constraint()` through [`crate::engine::generate_batch_constrained`].
//!
//! JSON schemas are compiled with at most [`JSON_MAX_WHITESPACE`] whitespace characters between two JSON
//! tokens (llguidance allows any run by default, which a weak model can fill forever); a schema's own
//! `x-guidance` options take precedence.
use crate::engine::Constraint;
use crate::sample::TokenMask;
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, ensure, Context, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::sync::Arc;

/// Whitespace characters allowed between two tokens of constrained JSON.
pub const JSON_MAX_WHITESPACE: usize = 20;

/// `schema` with at most [`JSON_MAX_WHITESPACE`] whitespace characters between two JSON tokens, unless it
/// sets its own `x-guidance` options: what [`Grammars::json_schema`] compiles, and what a `%json` schema in
/// a Lark grammar should be given.
pub fn bounded_whitespace(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        let ws = format!(r"[\x20\x0A\x0D\x09]{{1,{JSON_MAX_WHITESPACE}}}");
        obj.entry("x-guidance").or_insert_with(|| json!({"whitespace_pattern": ws}));
    }
    schema
}

/// Compiles grammars for one tokenizer and vocabulary.
pub struct Grammars {
    factory: Arc<ParserFactory>,
    vocab: usize,
}

impl Grammars {
    /// The grammar compiler for `tok` over a model vocabulary of `vocab` ids (ids the tokenizer lacks, e.g.
    /// padding rows of the embedding, are never allowed). The tokenizer's stop tokens end a grammar's output.
    pub fn new(tok: &Tokenizer, vocab: usize) -> Result<Grammars> {
        let n = u32::try_from(vocab).context("the vocabulary is too large")?;
        let stops: Vec<u32> = tok.stop_ids().iter().copied().filter(|&id| id < n).collect();
        let eos = *stops.first().context("the tokenizer has no stop token in the vocabulary to end a grammar with")?;
        let words: Vec<Vec<u8>> = (0..n)
            .map(|id| match tok.token_bytes(id) {
                Some(bytes) if tok.is_special(id) => [&[TokTrie::SPECIAL_TOKEN_MARKER][..], &bytes].concat(),
                Some(bytes) => bytes,
                None => Vec::new(),
            })
            .collect();
        let info = TokRxInfo::new(n, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&stops);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.set_stderr_log_level(0);
        Ok(Grammars { factory: Arc::new(factory), vocab })
    }

    /// Output that is JSON valid against `schema` (a JSON schema, draft 2020-12 as OpenAI's
    /// `response_format` takes it; what llguidance cannot enforce is an error here, not ignored).
    pub fn json_schema(&self, schema: &Value) -> Result<Grammar> {
        self.compile(TopLevelGrammar::from_json_schema(bounded_whitespace(schema)))
    }

    /// Output that is one JSON object (OpenAI's `json_object` response format).
    pub fn json_object(&self) -> Result<Grammar> {
        self.json_schema(&json!({"type": "object"}))
    }

    /// Output matching the regular expression `rx` whole (Rust `regex` syntax).
    pub fn regex(&self, rx: &str) -> Result<Grammar> {
        self.compile(TopLevelGrammar::from_regex(rx))
    }

    /// Output derived from the Lark grammar `lark` (llguidance's dialect: `start` is the top rule, and
    /// `%json { schema }` embeds a JSON schema).
    pub fn lark(&self, lark: &str) -> Result<Grammar> {
        self.compile(TopLevelGrammar::from_lark(lark.to_owned()))
    }

    fn compile(&self, grammar: TopLevelGrammar) -> Result<Grammar> {
        let parser = self.factory.create_parser(grammar)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(anyhow!("{e}"));
        }
        Ok(Grammar { matcher, vocab: self.vocab })
    }
}

/// A compiled grammar, ready to constrain any number of sequences.
#[derive(Clone)]
pub struct Grammar {
    /// At the start of the output.
    matcher: Matcher,
    vocab: usize,
}

impl Grammar {
    /// A fresh constraint for one sequence.
    pub fn constraint(&self) -> Box<dyn Constraint> {
        Box::new(GrammarConstraint { matcher: self.matcher.deep_clone(), vocab: self.vocab })
    }

    /// Whether `text` is a complete output of the grammar (for tests and checks): its bytes are fed as tokens
    /// of the vocabulary would be, one byte at a time through the token trie.
    pub fn accepts(&self, tok: &Tokenizer, text: &str) -> Result<bool> {
        let mut c = GrammarConstraint { matcher: self.matcher.deep_clone(), vocab: self.vocab };
        for id in tok.encode(text, false)? {
            if !c.allowed(&[])?.allows(id) {
                return Ok(false);
            }
            c.commit(id)?;
        }
        Ok(c.matcher.is_accepting()?)
    }
}

/// One sequence's position in a grammar.
struct GrammarConstraint {
    matcher: Matcher,
    vocab: usize,
}

impl Constraint for GrammarConstraint {
    fn allowed(&mut self, stop_ids: &[u32]) -> Result<TokenMask> {
        let vob = self.matcher.compute_mask_or_eos()?;
        let mut mask = TokenMask::from_words(vob.as_slice(), self.vocab);
        // The trie's end-of-output tokens (the tokenizer's stop tokens) stand for "the output may end here":
        // that is this sequence's own stop tokens.
        let env = self.matcher.tok_env()?;
        let mut ends = false;
        for &eos in env.tok_trie().eos_tokens() {
            ends |= mask.allows(eos);
            mask.disallow(eos);
        }
        if ends {
            stop_ids.iter().for_each(|&id| mask.allow(id));
        }
        ensure!(!mask.is_empty() || ends, "the grammar allows no token here");
        Ok(mask)
    }

    fn commit(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token)
    }
}
