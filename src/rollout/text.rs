//! Reading an action's text: the Python code it asks to run, and the output later agents see.
//!
//! Code extraction follows MAPPA's tool parser (paper notes §3.1; `marti/worlds/tools/parser.py`): every
//! closed fenced block tagged `python` (also `python3`/`py`, any case) anywhere in the reply, `<think>`
//! included, its content trimmed. MAPPA runs each block as its own stateless call and joins the outputs;
//! here all blocks are joined (blank line between, in order) and run as ONE program, so a function defined
//! in one block can be called in the next and the agent gets one observation. An unclosed fence (a
//! truncated reply) is not code, as in MAPPA.
const FENCE: &str = "```";
const PYTHON_TAGS: [&str; 3] = ["python", "python3", "py"];

/// The Python program in a reply, or `None` when it has no (non-empty) python block.
pub fn extract_python_code(text: &str) -> Option<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(FENCE) {
        let after_fence = &rest[open + FENCE.len()..];
        let tag_len = after_fence.find(|c: char| c.is_whitespace()).unwrap_or(after_fence.len());
        let (tag, body) = after_fence.split_at(tag_len);
        let Some(close) = body.find(FENCE) else { break };
        if PYTHON_TAGS.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
            let code = body[..close].trim();
            if !code.is_empty() {
                blocks.push(code);
            }
        }
        rest = &body[close + FENCE.len()..];
    }
    (!blocks.is_empty()).then(|| blocks.join("\n\n"))
}

/// `text` without its reasoning: `<think>…</think>` blocks removed; an unmatched `</think>` (the opening
/// tag was part of the generation prompt, as in Qwen3 thinking templates) drops everything before it;
/// an unclosed `<think>` (a truncated reply) drops everything after it. The result is trimmed.
pub fn strip_think(text: &str) -> String {
    const OPEN: &str = "<think>";
    const CLOSE: &str = "</think>";
    let mut out = String::new();
    let mut rest = text;
    // A close before any open: everything up to it was reasoning.
    if let Some(close) = rest.find(CLOSE) {
        if rest.find(OPEN).is_none_or(|open| close < open) {
            rest = &rest[close + CLOSE.len()..];
        }
    }
    while let Some(open) = rest.find(OPEN) {
        out.push_str(&rest[..open]);
        match rest[open..].find(CLOSE) {
            Some(close) => rest = &rest[open + close + CLOSE.len()..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}
