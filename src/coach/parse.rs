//! Strict parsing of the coach's score line.
//!
//! The reference implementation fell back to "the first number anywhere in the reply" and then to a
//! silent 5.0 (paper notes, section 8 item 5); both turn analysis text or failures into rewards. Here a
//! reply either carries one well-formed score or is rejected with a reason, and the caller retries once
//! or leaves the action out of training.
//!
//! Rules:
//! - A *score line* starts with the key `PROCESS_SCORE` (any case) followed by `:`. Markdown decoration
//!   around it is tolerated (`**PROCESS_SCORE:** 7`, `- PROCESS_SCORE: 7`, `### PROCESS_SCORE: 7`).
//!   A key in the middle of a sentence does not make a score line.
//! - The value is the rest of the line and must be a plain decimal: digits with an optional fraction
//!   (`7`, `6.5`, `08`), optionally signed so that `-1` is reported as out of range. Anything else
//!   (`7/10`, `8 out of 10`, `7.`, `nan`, `inf`, `[0-10]`) is not a number.
//! - The LAST score line decides; it must hold a number in [0, 10].
//! - An earlier score line holding a *different* valid number is a conflict (the coach changed its
//!   mind, or scored twice), so the reply is rejected. Earlier lines that repeat the same number, or
//!   that hold no number (an echoed format line like `PROCESS_SCORE: <0-10>`), are ignored.
//! - Text after the score line is allowed (e.g. an `ANSWER_CORRECT:` line).
use std::fmt;

/// The key the coach must write before its score.
pub const SCORE_KEY: &str = "PROCESS_SCORE";
/// Highest valid score; the lowest is 0.
pub const MAX_SCORE: f64 = 10.0;

/// Why a coach reply carries no usable score.
#[derive(Clone, Debug, PartialEq)]
pub enum ParseError {
    /// No line starts with `PROCESS_SCORE:`.
    Missing,
    /// The last score line's value is not a plain decimal number (the value, shortened).
    NotANumber(String),
    /// The value is a number outside [0, 10].
    OutOfRange(f64),
    /// An earlier score line holds a different number than the last one.
    Conflicting { earlier: f32, last: f32 },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Missing => write!(f, "no line of the form `{SCORE_KEY}: <number>` was found"),
            ParseError::NotANumber(v) => {
                write!(f, "the {SCORE_KEY} value {v:?} is not a plain number (write e.g. 7 or 6.5)")
            }
            ParseError::OutOfRange(v) => write!(f, "the {SCORE_KEY} value {v} is outside [0, {MAX_SCORE}]"),
            ParseError::Conflicting { earlier, last } => {
                write!(f, "conflicting {SCORE_KEY} lines: {earlier} and later {last}; give exactly one score")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// The score in a coach reply, by the rules in the module docs.
pub fn parse_score(reply: &str) -> Result<f32, ParseError> {
    let values: Vec<&str> = reply.lines().filter_map(score_value).collect();
    let (last, earlier) = values.split_last().ok_or(ParseError::Missing)?;
    let score = parse_value(last)?;
    match earlier.iter().filter_map(|v| parse_value(v).ok()).find(|&e| e != score) {
        Some(e) => Err(ParseError::Conflicting { earlier: e, last: score }),
        None => Ok(score),
    }
}

/// Markdown characters tolerated around the key and the value.
const DECORATION: &[char] = &['*', '`', '#', '>', '-'];

/// The value text of a score line, or `None` when the line is not one.
fn score_value(line: &str) -> Option<&str> {
    let line = line.trim().trim_start_matches(|c: char| DECORATION.contains(&c) || c.is_whitespace());
    let key = line.get(..SCORE_KEY.len())?;
    if !key.eq_ignore_ascii_case(SCORE_KEY) {
        return None;
    }
    let rest = line[SCORE_KEY.len()..].trim_start_matches(|c: char| c == '*' || c == '`' || c.is_whitespace());
    let value = rest.strip_prefix(':')?;
    Some(value.trim_matches(|c: char| c == '*' || c == '`' || c.is_whitespace()))
}

/// A plain decimal in [0, 10].
fn parse_value(value: &str) -> Result<f32, ParseError> {
    let unsigned = value.strip_prefix(['-', '+']).unwrap_or(value);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let number = if digits(int) && digits(frac) { value.parse::<f64>().ok() } else { None };
    let Some(x) = number else {
        return Err(ParseError::NotANumber(value.chars().take(40).collect()));
    };
    if !(0.0..=MAX_SCORE).contains(&x) {
        return Err(ParseError::OutOfRange(x));
    }
    // abs() only turns "-0" into 0.
    Ok(x.abs() as f32)
}
