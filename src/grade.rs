//! Rule-based math answer grading (issue 5): extraction, normalisation, equivalence, and the
//! avg@k / pass@k metrics built on it.
//!
//! Why rules and not a model: the RL reward and every evaluation number rest on "is this final answer
//! right?", so the check must be cheap, deterministic and auditable. The rules follow the common
//! open-source graders (Qwen2.5-Math / math-evaluation-harness `strip_string`) in spirit:
//!
//! 1. [`extract_answer`]: the content of the last `\boxed{...}` (or `\fbox{...}`, or `\boxed 5`);
//!    optionally the last number in the text when there is no box.
//! 2. [`normalize`]: LaTeX clean-up (spacing commands, `\left`/`\right`, `\text{}` wrappers, `\dfrac`,
//!    `\frac12`, degrees, percent, `\$`, trailing unit words, thousands separators, trailing zeros,
//!    a leading `x =`, `and`/`or` in solution lists, a final period, all whitespace).
//! 3. [`equivalent`]: equal normalised strings; else equal numbers (integers exactly, so `042` = `42`;
//!    decimals, `a/b`, `\frac{a}{b}` and mixed numbers `1\frac{4}{5}` with relative tolerance 1e-6);
//!    else structure: tuples and intervals element by element with the bracket types respected
//!    (`[1,2)` != `(1,2)`), `\cup` unions piece by piece (in any order), sets `\{..\}` and bare lists `1,-2`
//!    order-insensitive, `pmatrix` cell by cell. Anything else (`\pi`, `\sqrt`, polynomials, words)
//!    must match as a normalised string.
//!
//! Percent: `%` is dropped, so `50\%` equals `50` (as in the common graders), while `50\%` and `0.5`
//! are NOT equal. Tolerance is a flat relative 1e-6: no looser tolerance for short decimals, so a gold
//! `1.33` does not accept `\frac{4}{3}`.
//!
//! Every function here is total: malformed input (unbalanced braces, `\boxed{` at the end, huge
//! numbers, empty strings) yields `None` / `false` / a best-effort string, never a panic. Scanning is
//! byte-wise on ASCII delimiters, so slicing always lands on UTF-8 boundaries.

/// Commands whose braced argument is kept and the command dropped (`\text{cm}` -> `cm`).
const TEXT_WRAPPERS: &[&str] = &["text", "textbf", "textrm", "textit", "textnormal", "mathrm", "mathbf", "mbox"];

/// Unit words dropped when they trail a number (`5 cm`, `10 dollars`, `36 square units`).
#[rustfmt::skip]
const UNIT_WORDS: &[&str] = &[
    "degrees", "degree", "percent", "cm", "centimeters", "centimeter", "mm", "millimeters", "km",
    "kilometers", "kilometer", "meters", "meter", "metres", "in", "inch", "inches", "ft", "feet", "foot",
    "yd", "yards", "yard", "miles", "mile", "mi", "mph", "kph", "units", "unit", "square", "sq", "cubic",
    "dollars", "dollar", "cents", "cent", "euros", "euro", "usd", "pounds", "lbs", "lb", "ounces", "oz",
    "grams", "gram", "kg", "kilograms", "liters", "liter", "litres", "ml", "gallons", "gallon", "hours",
    "hour", "hrs", "hr", "minutes", "minute", "mins", "min", "seconds", "second", "sec", "days", "day",
    "weeks", "week", "months", "month", "years", "year", "points", "ways", "people", "students",
];

/// Nesting depth past which structural comparison gives up (guards the stack on fuzz input).
const MAX_DEPTH: usize = 32;
/// List length past which order-insensitive matching gives up (it is quadratic).
const MAX_ITEMS: usize = 256;
/// Passes of `\text{}` unwrapping; each pass peels one level of nesting.
const MAX_UNWRAP_PASSES: usize = 8;
/// Relative tolerance for non-integer numeric comparison.
const REL_TOL: f64 = 1e-6;

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// Content of the last top-level `\boxed{...}` / `\fbox{...}` / `\boxed 5` in `text`.
///
/// Nested braces are matched (escaped `\{`/`\}` do not count); a box inside a box is skipped, and a
/// box whose whole content is another box is unwrapped. `None` when there is no box, when the last
/// box is malformed (unbalanced, `\boxed{` at the end: a truncated answer), or when it is empty.
pub fn extract_boxed(text: &str) -> Option<String> {
    let mut content = last_box(text)?;
    while let Some(inner) = whole_box(&content) {
        content = inner;
    }
    let content = content.trim();
    (!content.is_empty()).then(|| content.to_string())
}

/// The answer in a model response: the last box; else, with `last_number_fallback`, the last number
/// in the text (sign, decimals, `1,234` thousands groups and `3/4` fractions included).
pub fn extract_answer(text: &str, last_number_fallback: bool) -> Option<String> {
    extract_boxed(text).or_else(|| if last_number_fallback { last_number(text) } else { None })
}

/// Last top-level box's raw content; `None` if there is none or the last one is malformed.
fn last_box(text: &str) -> Option<String> {
    let mut pos = 0;
    let mut last = None;
    while let Some(after) = next_box_command(text, pos) {
        let (content, end) = box_argument(text, after)?;
        last = Some(content);
        pos = end;
    }
    last
}

/// If `s` (trimmed) is exactly one box, its content.
fn whole_box(s: &str) -> Option<String> {
    let s = s.trim();
    if !s.starts_with("\\boxed") && !s.starts_with("\\fbox") {
        return None;
    }
    let after = next_box_command(s, 0).filter(|&after| after <= "\\boxed".len())?;
    let (content, end) = box_argument(s, after)?;
    (end == s.len()).then_some(content)
}

/// Offset just past the first `\boxed` / `\fbox` at or after `from` that is a whole command name.
fn next_box_command(text: &str, from: usize) -> Option<usize> {
    let mut pos = from;
    loop {
        let rest = text.get(pos..)?;
        let (at, len) = [("\\boxed", 6), ("\\fbox", 5)]
            .iter()
            .filter_map(|&(name, len)| rest.find(name).map(|i| (i, len)))
            .min()?;
        let after = pos + at + len;
        if !text.as_bytes().get(after).is_some_and(u8::is_ascii_alphabetic) {
            return Some(after);
        }
        pos = after;
    }
}

/// The argument of a box command starting at `after`: `{...}` (brace-matched) or a bare token up to
/// whitespace or `$`. Returns the content and the offset just past it.
fn box_argument(text: &str, after: usize) -> Option<(String, usize)> {
    let start = after + text[after..].len() - text[after..].trim_start().len();
    if text.as_bytes().get(start) == Some(&b'{') {
        let close = matching_brace(text, start)?;
        return Some((text[start + 1..close].to_string(), close + 1));
    }
    let rest = &text[start..];
    let len = rest.find(|c: char| c.is_whitespace() || c == '$').unwrap_or(rest.len());
    (len > 0).then(|| (rest[..len].to_string(), start + len))
}

/// Offset of the `}` closing the `{` at `open`, skipping escaped characters (`\{`, `\}`, `\\`).
fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = open;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The last number in `text` as a plain string (commas of thousands groups removed).
fn last_number(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut last = None;
    while i < bytes.len() {
        let starts =
            bytes[i].is_ascii_digit() || (bytes[i] == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        if starts {
            let end = number_end(bytes, i);
            let negative = i > 0 && bytes[i - 1] == b'-' && (i < 2 || !bytes[i - 2].is_ascii_alphanumeric());
            let sign = if negative { "-" } else { "" };
            last = Some(format!("{sign}{}", text[i..end].replace(',', "")));
            i = end;
        } else {
            i += 1;
        }
    }
    last
}

/// End of the number token starting at `start`: digits, `,ddd` groups, `.ddd`, or `/ddd`.
fn number_end(bytes: &[u8], start: usize) -> usize {
    let digits_from = |i: usize| i + bytes[i.min(bytes.len())..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut end = digits_from(start);
    if end - start <= 3 {
        while bytes.get(end) == Some(&b',') && digits_from(end + 1) == end + 4 {
            end += 4;
        }
    }
    let next_is_digit = |i: usize| bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
    let joins = match bytes.get(end) {
        Some(b'.') => true,
        Some(b'/') => bytes[start] != b'.',
        _ => false,
    };
    if joins && next_is_digit(end) {
        end = digits_from(end + 1);
    }
    end
}

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

/// Canonical string form of an answer (see the module docs for the list of rules).
pub fn normalize(ans: &str) -> String {
    let s = strip_spacing_and_delimiters(ans);
    let s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("bmatrix", "pmatrix");
    let s = s.replace("\\leq", "\\le").replace("\\geq", "\\ge").replace("\\neq", "\\ne");
    let s = drop_trailing_text_unit(&s);
    let s = unwrap_text(&s);
    let s = strip_degrees_and_percent(&s);
    let s = strip_final_period(&s);
    let s = strip_unit_words(s);
    let s = strip_assignment(s);
    let s = list_words_to_commas(&s);
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let s = brace_single_arguments(&s);
    let s = drop_thousands_separators(&s);
    let s = tidy_decimals(&s);
    let s = strip_final_period(&s);
    unwrap_choice_letter(s)
}

/// Removes `$`, `\$`, `\left`/`\right`, `\displaystyle` and the spacing commands `\! \, \; \:`;
/// `\ ` and newlines become plain spaces.
fn strip_spacing_and_delimiters(ans: &str) -> String {
    let mut out = String::with_capacity(ans.len());
    let mut chars = ans.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('$', _) => {}
            ('\\', Some('$' | '!' | ',' | ';' | ':')) => {
                chars.next();
            }
            ('\\', Some(' ')) => {
                chars.next();
                out.push(' ');
            }
            ('\\', Some('\\')) => {
                chars.next();
                out.push_str("\\\\");
            }
            ('\n' | '\r' | '\t', _) => out.push(' '),
            _ => out.push(c),
        }
    }
    ["left", "right", "displaystyle"].iter().fold(out, |s, name| remove_command(&s, name)).trim().to_string()
}

/// Offset and length of the first `\name` in `s` that is a whole command.
fn find_command(s: &str, name: &str) -> Option<(usize, usize)> {
    let pattern = format!("\\{name}");
    let mut from = 0;
    while let Some(at) = s.get(from..)?.find(&pattern) {
        let after = from + at + pattern.len();
        if !s.as_bytes().get(after).is_some_and(u8::is_ascii_alphabetic) {
            return Some((from + at, pattern.len()));
        }
        from = after;
    }
    None
}

/// Removes every `\name` that is a whole command (not followed by another letter).
fn remove_command(s: &str, name: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((at, len)) = find_command(rest, name) {
        out.push_str(&rest[..at]);
        rest = &rest[at + len..];
    }
    out.push_str(rest);
    out
}

/// Drops a trailing `\text{ words}` (letters and spaces only, optional `^2`/`^3`) after a number:
/// `16\text{ daps}` -> `16`. Such a trailing text is a unit in MATH-style answers.
fn drop_trailing_text_unit(s: &str) -> String {
    let body = strip_power_suffix(s.trim_end());
    if !body.ends_with('}') {
        return s.to_string();
    }
    let Some(open) = body.rfind('{') else { return s.to_string() };
    let inner = &body[open + 1..body.len() - 1];
    let is_words = !inner.trim().is_empty() && inner.chars().all(|c| c.is_ascii_alphabetic() || c == ' ');
    let prefix = TEXT_WRAPPERS.iter().find_map(|w| body[..open].trim_end().strip_suffix(&format!("\\{w}")));
    match prefix {
        Some(prefix) if is_words && ends_with_number(prefix.trim_end()) => prefix.trim_end().to_string(),
        _ => s.to_string(),
    }
}

/// `s` without a trailing `^2`, `^3`, `^{2}` or `^{3}`.
fn strip_power_suffix(s: &str) -> &str {
    ["^2", "^3", "^{2}", "^{3}"].iter().find_map(|p| s.strip_suffix(p)).unwrap_or(s)
}

/// Whether `s` ends like a number or a numeric expression (digit, `}` of a fraction, `\pi`).
fn ends_with_number(s: &str) -> bool {
    s.ends_with(|c: char| c.is_ascii_digit() || c == '}' || c == '.') || s.ends_with("\\pi")
}

/// Replaces `\text{X}`-style wrappers by `X` (nested wrappers peeled up to [`MAX_UNWRAP_PASSES`]).
fn unwrap_text(s: &str) -> String {
    let mut cur = s.to_string();
    for _ in 0..MAX_UNWRAP_PASSES {
        let next = unwrap_text_once(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

/// One left-to-right pass of [`unwrap_text`]; unbalanced wrappers are left as they are.
fn unwrap_text_once(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if let Some((content, end)) = wrapper_at(s, i) {
            out.push_str(content);
            i = end;
        } else {
            let c = s[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8().max(1);
        }
    }
    out
}

/// If a text wrapper command with a balanced argument starts at `i`: its content and end offset.
fn wrapper_at(s: &str, i: usize) -> Option<(&str, usize)> {
    let rest = s[i..].strip_prefix('\\')?;
    let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
    if !TEXT_WRAPPERS.contains(&&rest[..name_len]) {
        return None;
    }
    let after = i + 1 + name_len;
    let open = after + s[after..].len() - s[after..].trim_start().len();
    if s.as_bytes().get(open) != Some(&b'{') {
        return None;
    }
    let close = matching_brace(s, open)?;
    Some((&s[open + 1..close], close + 1))
}

/// Removes degree marks (`^\circ`, `^{\circ}`, `°`) and percent signs (`\%`, `%`).
fn strip_degrees_and_percent(s: &str) -> String {
    ["^{\\circ}", "^\\circ", "^ \\circ", "°", "\\%", "%"].iter().fold(s.to_string(), |acc, p| acc.replace(p, ""))
}

/// Trims and drops trailing periods (`5.` -> `5`).
fn strip_final_period(s: &str) -> String {
    s.trim().trim_end_matches('.').trim_end().to_string()
}

/// Drops trailing unit words after a number: `5 cm` -> `5`, `36 square units` -> `36`, `60mph` -> `60`.
fn strip_unit_words(s: String) -> String {
    let mut cur = s.as_str();
    let mut stripped = false;
    while let Some(prefix) = strip_one_unit(cur) {
        cur = prefix;
        stripped = true;
    }
    if stripped && ends_with_number(cur) {
        cur.to_string()
    } else {
        s
    }
}

/// `s` without its last word, if that word (with an optional `^2`/`^3` or `.`) is a unit word and something
/// is left before it.
fn strip_one_unit(s: &str) -> Option<&str> {
    let body = strip_power_suffix(s.trim_end().trim_end_matches('.'));
    let word_len = body.bytes().rev().take_while(u8::is_ascii_alphabetic).count();
    let (prefix, word) = body.split_at(body.len() - word_len);
    let is_unit = UNIT_WORDS.contains(&word.to_ascii_lowercase().as_str());
    let prefix_trim = prefix.trim_end();
    (is_unit && !prefix.ends_with('\\') && !prefix_trim.is_empty()).then_some(prefix_trim)
}

/// Solution lists written in words: `2, 3, and 4` -> `2,3,4`, `-12 or -30` -> `-12,-30`. A word counts
/// when it is a whole run of letters (not a command name); whitespace goes and doubled commas merge.
fn list_words_to_commas(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut replaced = false;
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let run = rest.bytes().take_while(u8::is_ascii_alphabetic).count().max(c.len_utf8());
        let word = &rest[..run];
        if (word == "and" || word == "or") && !out.ends_with('\\') {
            out.push(',');
            replaced = true;
        } else {
            out.push_str(word);
        }
        rest = &rest[run..];
    }
    if !replaced {
        return s.to_string();
    }
    let mut merged: String = out.chars().filter(|c| !c.is_whitespace()).collect();
    while merged.contains(",,") {
        merged = merged.replace(",,", ",");
    }
    merged
}

/// Drops a leading single-variable assignment or membership: `x = 5` -> `5`, `k=\frac12` -> `\frac12`,
/// `x \in [1,2]` -> `[1,2]`. Equations with anything else on the left stay whole.
fn strip_assignment(s: String) -> String {
    let split = if s.matches('=').count() == 1 { s.find('=').map(|at| (at, 1)) } else { find_command(&s, "in") };
    match split.map(|(at, len)| (&s[..at], &s[at + len..])) {
        Some((left, right)) if is_single_variable(left.trim()) && !right.trim().is_empty() => right.trim().to_string(),
        _ => s,
    }
}

/// A single variable name: `x`, `k`, `x_1`, `a_{n}`, or a Greek-letter command like `\theta`.
fn is_single_variable(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some('\\') => s.len() > 1 && chars.all(|c| c.is_ascii_alphabetic()) && s != "\\in",
        Some(c) if c.is_ascii_alphabetic() => {
            let rest = chars.as_str();
            let sub = rest.strip_prefix('_').map(|r| r.trim_start_matches('{').trim_end_matches('}'));
            rest.is_empty() || sub.is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
        }
        _ => false,
    }
}

/// Braces one-character arguments: `\frac12` -> `\frac{1}{2}`, `\frac{270}7` -> `\frac{270}{7}`,
/// `\sqrt2` -> `\sqrt{2}`, and `^{2}` / `_{5}` -> `^2` / `_5`. Expects whitespace already removed.
/// One pass without recursion: `open_args` remembers, per open `{` that is a first `\frac` argument,
/// that one more argument follows its `}`.
fn brace_single_arguments(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut open_args: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut expect = 0usize;
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let mut step = c.len_utf8();
        if expect > 0 && c.is_ascii_alphanumeric() {
            out.extend(['{', c, '}']);
            expect -= 1;
        } else if expect > 0 && c == '{' {
            depth += 1;
            if expect > 1 {
                open_args.push(depth);
            }
            expect = 0;
            out.push(c);
        } else if let Some(args) = command_arity(rest) {
            out.push_str(&rest[..5]);
            step = 5;
            expect = args;
        } else if let Some((marker, inner)) = single_char_group(rest) {
            out.extend([marker, inner]);
            step = 4;
            expect = 0;
        } else {
            expect = 0;
            match c {
                '\\' => step += rest[1..].chars().next().map_or(0, char::len_utf8),
                '{' => depth += 1,
                '}' => {
                    if open_args.last() == Some(&depth) {
                        open_args.pop();
                        expect = 1;
                    }
                    depth = depth.saturating_sub(1);
                }
                _ => {}
            }
            out.push_str(&rest[..step]);
        }
        rest = &rest[step..];
    }
    out
}

/// Argument count of a `\frac` (2) or `\sqrt` (1, not `\sqrt[n]`) command starting `s`.
fn command_arity(s: &str) -> Option<usize> {
    let next = s.as_bytes().get(5).copied().unwrap_or(b' ');
    let whole = !next.is_ascii_alphabetic();
    if s.starts_with("\\frac") && whole {
        Some(2)
    } else if s.starts_with("\\sqrt") && whole && next != b'[' {
        Some(1)
    } else {
        None
    }
}

/// `^{c}` or `_{c}` with one alphanumeric `c`: the marker and `c`.
fn single_char_group(s: &str) -> Option<(char, char)> {
    let b = s.as_bytes();
    let ok =
        b.len() >= 4 && (b[0] == b'^' || b[0] == b'_') && b[1] == b'{' && b[2].is_ascii_alphanumeric() && b[3] == b'}';
    ok.then(|| (b[0] as char, b[2] as char))
}

/// `1,000` -> `1000` when the whole answer is one number whose commas split groups of 3 digits.
fn drop_thousands_separators(s: &str) -> String {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let int_part = unsigned.split('.').next().unwrap_or("");
    let frac_ok = unsigned.split_once('.').is_none_or(|(_, f)| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    let mut groups = int_part.split(',');
    let head_ok = groups.next().is_some_and(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()));
    let tail_ok = groups.all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()));
    if int_part.contains(',') && head_ok && tail_ok && frac_ok {
        s.replace(',', "")
    } else {
        s.to_string()
    }
}

/// In every decimal number: trailing fractional zeros dropped (`2.50` -> `2.5`, `3.0` -> `3`) and a
/// bare leading point completed (`.35` -> `0.35`).
fn tidy_decimals(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 2);
    let mut i = 0;
    while i < bytes.len() {
        let prev_is_digit = i > 0 && bytes[i - 1].is_ascii_digit();
        let next_is_digit = bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        if bytes[i] == b'.' && (prev_is_digit || next_is_digit) {
            let end = i + 1 + bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
            let frac = s[i + 1..end].trim_end_matches('0');
            if !prev_is_digit {
                out.push('0');
            }
            if !frac.is_empty() {
                out.push('.');
                out.push_str(frac);
            }
            i = end;
        } else {
            let c = s[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8().max(1);
        }
    }
    out
}

/// `(C)` -> `C` for multiple-choice letters.
fn unwrap_choice_letter(s: String) -> String {
    let b = s.as_bytes();
    if b.len() == 3 && b[0] == b'(' && b[1].is_ascii_uppercase() && b[2] == b')' {
        (b[1] as char).to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Equivalence
// ---------------------------------------------------------------------------------------------

/// Whether a predicted answer matches the gold one (see the module docs for the rules). An answer
/// that normalises to the empty string never matches.
pub fn equivalent(pred: &str, gold: &str) -> bool {
    let (p, g) = (normalize(pred), normalize(gold));
    !p.is_empty() && !g.is_empty() && same_value(&p, &g, 0)
}

/// `extract_answer` + `equivalent`: is this response correct for this gold answer?
pub fn grade(response: &str, gold: &str, last_number_fallback: bool) -> bool {
    extract_answer(response, last_number_fallback).is_some_and(|pred| equivalent(&pred, gold))
}

/// Structural comparison of two normalised strings.
fn same_value(a: &str, b: &str, depth: usize) -> bool {
    if a == b {
        return true;
    }
    if depth > MAX_DEPTH {
        return false;
    }
    if let (Some(x), Some(y)) = (parse_number(a), parse_number(b)) {
        return x.same(&y);
    }
    let (ua, ub) = (split_top_level(a, "\\cup"), split_top_level(b, "\\cup"));
    if ua.len() > 1 || ub.len() > 1 {
        return same_any_order(&ua, &ub, depth);
    }
    if let (Some(x), Some(y)) = (matrix_cells(a), matrix_cells(b)) {
        return same_in_order(&x, &y, depth);
    }
    if let (Some(x), Some(y)) = (set_items(a), set_items(b)) {
        return same_any_order(&x, &y, depth);
    }
    if let (Some((xo, x, xc)), Some((yo, y, yc))) = (bracketed_items(a), bracketed_items(b)) {
        return xo == yo && xc == yc && same_in_order(&x, &y, depth);
    }
    let (la, lb) = (split_top_level(a, ","), split_top_level(b, ","));
    (la.len() > 1 || lb.len() > 1) && same_any_order(&la, &lb, depth)
}

/// Pairwise comparison in order.
fn same_in_order(a: &[&str], b: &[&str], depth: usize) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y, depth + 1))
}

/// Multiset comparison: every item of `a` matched to a distinct item of `b` (greedy).
fn same_any_order(a: &[&str], b: &[&str], depth: usize) -> bool {
    if a.len() != b.len() || a.len() > MAX_ITEMS {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let hit = (0..b.len()).find(|&j| !used[j] && same_value(x, b[j], depth + 1));
        hit.inspect(|&j| used[j] = true).is_some()
    })
}

/// Splits `s` on `sep` where it is outside every bracket pair (`()`, `[]`, `{}`).
fn split_top_level<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let bytes = s.as_bytes();
    let mut parts = Vec::new();
    let mut depth = 0i64;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'\\' if depth == 0 && bytes[i..].starts_with(sep.as_bytes()) => {}
            b'\\' => i += 1,
            _ => {}
        }
        if depth == 0 && bytes.get(i..).is_some_and(|rest| rest.starts_with(sep.as_bytes())) {
            parts.push(&s[start..i]);
            i += sep.len();
            start = i;
        } else {
            i += 1;
        }
    }
    parts.push(s.get(start..).unwrap_or(""));
    parts
}

/// `(a,b,...)` / `[a,b)` etc.: opening bracket, top-level items, closing bracket. Needs a comma.
fn bracketed_items(s: &str) -> Option<(u8, Vec<&str>, u8)> {
    let b = s.as_bytes();
    let (open, close) = (*b.first()?, *b.last()?);
    let ok = b.len() >= 2 && matches!(open, b'(' | b'[') && matches!(close, b')' | b']');
    let items = split_top_level(s.get(1..s.len() - 1).filter(|_| ok)?, ",");
    (items.len() > 1 && closes_at_end(s)).then_some((open, items, close))
}

/// Whether the bracket opened at offset 0 closes only at the very end (so `(1,2)\cup(3,4)` and
/// `(a+5)(b+2)` are not single bracketed lists).
fn closes_at_end(s: &str) -> bool {
    let mut depth = 0i64;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && i + 1 < s.len() {
            return false;
        }
    }
    depth == 0
}

/// `\{a,b\}` -> the items.
fn set_items(s: &str) -> Option<Vec<&str>> {
    let inner = s.strip_prefix("\\{")?.strip_suffix("\\}")?;
    Some(split_top_level(inner, ","))
}

/// `\begin{pmatrix}a&b\\c&d\end{pmatrix}` -> cells row by row, with `\\` kept as a row marker so
/// that shapes must agree.
fn matrix_cells(s: &str) -> Option<Vec<&str>> {
    let inner = s.strip_prefix("\\begin{pmatrix}")?.strip_suffix("\\end{pmatrix}")?;
    let mut cells = Vec::new();
    for (r, row) in inner.split("\\\\").enumerate() {
        if r > 0 {
            cells.push("\\\\");
        }
        cells.extend(row.split('&'));
    }
    Some(cells)
}

/// A parsed numeric answer: integers kept exact (any size), everything else as f64.
enum Number {
    Integer { negative: bool, digits: String },
    Real(f64),
}

impl Number {
    /// Integers compare exactly; otherwise relative tolerance [`REL_TOL`].
    fn same(&self, other: &Number) -> bool {
        match (self, other) {
            (Number::Integer { negative: n1, digits: d1 }, Number::Integer { negative: n2, digits: d2 }) => {
                d1 == d2 && (n1 == n2 || d1 == "0")
            }
            _ => {
                let (x, y) = (self.value(), other.value());
                x.is_finite() && y.is_finite() && (x == y || (x - y).abs() <= REL_TOL * x.abs().max(y.abs()))
            }
        }
    }

    fn value(&self) -> f64 {
        match self {
            Number::Integer { negative, digits } => {
                let v: f64 = digits.parse().unwrap_or(f64::NAN);
                if *negative {
                    -v
                } else {
                    v
                }
            }
            Number::Real(v) => *v,
        }
    }
}

/// Parses `42`, `-042`, `2.5`, `3/4`, `\frac{a}{b}`, `-\frac{a}{b}` and `1\frac{4}{5}` (a mixed
/// number). `None` for anything else or a non-finite value.
fn parse_number(s: &str) -> Option<Number> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = body.trim_start_matches('0');
        let digits = if trimmed.is_empty() { "0" } else { trimmed };
        return Some(Number::Integer { negative, digits: digits.to_string() });
    }
    let v = decimal(body).or_else(|| slash_fraction(body)).or_else(|| latex_fraction(body))?;
    let v = if negative { -v } else { v };
    v.is_finite().then_some(Number::Real(v))
}

/// Plain unsigned decimal `12.5` / `12`.
fn decimal(s: &str) -> Option<f64> {
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') && s.matches('.').count() <= 1 && s != ".";
    ok.then(|| s.parse().ok()).flatten()
}

/// `a/b` with plain numbers (`a` may carry a sign).
fn slash_fraction(s: &str) -> Option<f64> {
    let (a, b) = s.split_once('/')?;
    Some(signed_decimal(a)? / decimal(b)?)
}

/// `\frac{a}{b}` (signed plain numbers inside) or the mixed number `n\frac{a}{b}` (`n` a plain
/// unsigned integer, `a/b` non-negative).
fn latex_fraction(s: &str) -> Option<f64> {
    let at = s.find("\\frac{")?;
    let open = at + "\\frac".len();
    let close = matching_brace(s, open)?;
    let den = s.get(close + 1..)?.strip_prefix('{')?.strip_suffix('}')?;
    let frac = signed_decimal(&s[open + 1..close])? / signed_decimal(den)?;
    if at == 0 {
        return Some(frac);
    }
    let whole = &s[..at];
    let is_integer = whole.bytes().all(|b| b.is_ascii_digit());
    (is_integer && frac >= 0.0).then(|| decimal(whole).map(|w| w + frac)).flatten()
}

/// Plain decimal with an optional leading `-`.
fn signed_decimal(s: &str) -> Option<f64> {
    match s.strip_prefix('-') {
        Some(rest) => decimal(rest).map(|v| -v),
        None => decimal(s),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// avg@k: each problem's score is the fraction of its samples that are correct; returns the mean of
/// those scores over problems and its standard error (sample standard deviation over problems, n-1
/// denominator, divided by sqrt(#problems); 0 with fewer than two problems). A problem with no
/// samples scores 0. Empty input gives (0, 0).
pub fn avg_at_k(correct: &[Vec<bool>]) -> (f64, f64) {
    let scores: Vec<f64> = correct
        .iter()
        .map(|s| if s.is_empty() { 0.0 } else { s.iter().filter(|&&c| c).count() as f64 / s.len() as f64 })
        .collect();
    mean_and_standard_error(&scores)
}

/// pass@k with the unbiased estimator of Chen et al. (2021): for a problem with n samples of which c
/// are correct, pass@k = 1 - C(n-c, k) / C(n, k), the probability that k samples drawn without
/// replacement contain a correct one. Computed as 1 - prod_{i=n-c+1..=n} (1 - k/i) to stay finite.
/// When n < k, k is clamped to n (the estimate uses all samples); n = 0 scores 0; k = 0 scores 0.
/// Returns the mean over problems and its standard error as in [`avg_at_k`].
pub fn pass_at_k(correct: &[Vec<bool>], k: usize) -> (f64, f64) {
    let scores: Vec<f64> =
        correct.iter().map(|s| pass_at_k_one(s.len(), s.iter().filter(|&&c| c).count(), k)).collect();
    mean_and_standard_error(&scores)
}

/// Unbiased pass@k for one problem with `n` samples, `c` correct.
fn pass_at_k_one(n: usize, c: usize, k: usize) -> f64 {
    let k = k.min(n);
    if k == 0 || c == 0 {
        return 0.0;
    }
    if n - c < k {
        return 1.0;
    }
    1.0 - (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// Mean and standard error of the mean (n-1 sample variance).
fn mean_and_standard_error(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}
