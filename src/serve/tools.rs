//! Tool calling for `/v1/chat/completions`: the request's `tools` and `tool_choice` validated, the
//! model's tool-call markup parsed into OpenAI's `tool_calls`, and the grammar that forces a call.
//!
//! - Which markup a model writes is read from its chat template ([`ToolFormat::of`]): a template that
//!   writes `<tool_call>` is Hermes/Qwen style (Qwen2.5, Qwen3, Hermes, ...): each call is
//!   `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`. A template that takes `tools` but
//!   writes another markup (Llama 3.x's bare JSON, Mistral's `[TOOL_CALLS]`, ...) and one that takes no
//!   `tools` at all are refused with a 400 naming `tools`, rather than answered with unparsed markup.
//! - The tools are rendered by the model's own template (its `tools` variable, as transformers passes them),
//!   and so are assistant messages with `tool_calls` (their `arguments` strings parsed back into objects,
//!   as vLLM does, since templates write them with `tojson`) and `tool` messages.
//! - `tool_choice`: `none` (tools still shown, output not parsed), `auto` (the default with tools: the
//!   output is parsed), `required` (the output is constrained to one or more calls of the given tools,
//!   arguments valid against their `parameters`), or `{"type": "function", "function": {"name": ...}}`
//!   (constrained to exactly one call of that function).
//! - Parsing ([`parse_hermes`]): `content` is the text before the first `<tool_call>` (trailing whitespace
//!   dropped; null when empty), each block's JSON gives a call (`arguments` as a JSON string, as OpenAI's),
//!   and the finish reason becomes `tool_calls`. A block that is not such JSON makes the whole output plain
//!   content: nothing is dropped. Streamed, the content is sent as it comes up to a `<tool_call>` (a tail
//!   that may begin one is held back), and the calls come in one delta at the end ([`ToolStream`]).
use super::error::ApiError;
use crate::constrain::{Grammar, Grammars};
use serde_json::{json, Value};

const CALL_START: &str = "<tool_call>";
const CALL_END: &str = "</tool_call>";

/// The tool-call markup a chat template uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Hermes, Qwen2.5, Qwen3).
    Hermes,
}

impl ToolFormat {
    /// The format `template` writes tool calls in, or why tools cannot be served with it.
    pub fn of(template: &str) -> Result<ToolFormat, String> {
        if template.contains(CALL_START) {
            Ok(ToolFormat::Hermes)
        } else if template.contains("tools") {
            Err("this model's chat template takes tools, but writes tool calls in a format this server cannot parse \
                 (only Hermes/Qwen <tool_call> markup is supported)"
                .into())
        } else {
            Err("this model's chat template has no tool support (it does not render `tools`)".into())
        }
    }
}

/// What a request asked of tool calling (`tool_choice`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's tools, validated.
#[derive(Debug)]
pub struct Tools {
    /// The tool objects as the template takes them (`{"type": "function", "function": {...}}`).
    pub defs: Vec<Value>,
    pub choice: Choice,
}

impl Tools {
    /// Validates `tools` and `tool_choice` (absent or empty tools: None, and a `tool_choice` other than
    /// `none` is an error). `format` is the model's tool-call format, or why it has none.
    pub fn parse(
        tools: Option<Vec<Value>>,
        tool_choice: Option<Value>,
        format: &Result<ToolFormat, String>,
    ) -> Result<Option<Tools>, ApiError> {
        let tools = tools.unwrap_or_default();
        let choice = match &tool_choice {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(match s.as_str() {
                "none" => Choice::None,
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => {
                    let message = format!("tool_choice must be none, auto, required or a function, got {other:?}");
                    return Err(invalid("tool_choice", message));
                }
            }),
            Some(v) => match (v["type"].as_str(), v["function"]["name"].as_str()) {
                (Some("function"), Some(name)) => Some(Choice::Named(name.to_owned())),
                _ => {
                    let message = "tool_choice must be none, auto, required or \
                                   {\"type\": \"function\", \"function\": {\"name\": ...}}";
                    return Err(invalid("tool_choice", message.into()));
                }
            },
        };
        if tools.is_empty() {
            return match choice {
                None | Some(Choice::None) => Ok(None),
                Some(_) => Err(invalid("tool_choice", "tool_choice needs tools".into())),
            };
        }
        if let Err(why) = format {
            return Err(ApiError::invalid("unsupported", why.clone()).param("tools"));
        }
        let mut names = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let f = &t["function"];
            let name = f["name"].as_str().filter(|n| !n.is_empty());
            let Some(name) = name.filter(|_| t["type"] == "function") else {
                let message = format!(
                    "tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": ...}}}}"
                );
                return Err(invalid("tools", message));
            };
            if !(f["parameters"].is_null() || f["parameters"].is_object()) {
                return Err(invalid("tools", format!("tools[{i}].function.parameters must be a JSON schema object")));
            }
            names.push(name);
        }
        let choice = choice.unwrap_or(Choice::Auto);
        if let Choice::Named(name) = &choice {
            if !names.contains(&name.as_str()) {
                return Err(invalid(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not among the tools"),
                ));
            }
        }
        Ok(Some(Tools { defs: tools, choice }))
    }

    /// Whether the output is parsed for tool calls.
    pub fn parses(&self) -> bool {
        self.choice != Choice::None
    }

    /// The grammar of a forced call (`required` or a named function), None otherwise.
    pub fn forced(&self, grammars: &Grammars) -> Result<Option<Grammar>, ApiError> {
        let call = |def: &Value| {
            let f = &def["function"];
            let params = if f["parameters"].is_object() { f["parameters"].clone() } else { json!({"type": "object"}) };
            json!({
                "type": "object",
                "properties": {"name": {"const": f["name"]}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        };
        let (schema, many) = match &self.choice {
            Choice::None | Choice::Auto => return Ok(None),
            Choice::Required => (json!({"anyOf": self.defs.iter().map(call).collect::<Vec<_>>()}), true),
            Choice::Named(name) => {
                let def = self.defs.iter().find(|d| d["function"]["name"] == name.as_str());
                (call(def.expect("a named tool is among the tools (checked in parse)")), false)
            }
        };
        let start = if many { "start: call (\"\\n\" call)*" } else { "start: call" };
        let lark = format!(
            "{start}\ncall: {} body {}\nbody: %json {}\n",
            lark_string(&format!("{CALL_START}\n")),
            lark_string(&format!("\n{CALL_END}")),
            hermes_json(schema)
        );
        let grammar = grammars.lark(&lark).map_err(|e| {
            let message = format!("cannot constrain a call to these tools' parameters: {e:#}");
            ApiError::invalid("unsupported", message).param("tools")
        })?;
        Ok(Some(grammar))
    }
}

/// `schema` written as Hermes/Qwen models write a call, and as their templates render one: one line with
/// Python's `json.dumps` separators (", " and ": ") and no other whitespace.
fn hermes_json(mut schema: Value) -> Value {
    schema["x-guidance"] = json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
    schema
}

/// `s` as a Lark string literal.
fn lark_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn invalid(param: &'static str, message: String) -> ApiError {
    ApiError::invalid("invalid_value", message).param(param)
}

/// One parsed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// An output with tool calls: the content before them (None when empty) and the calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

/// The Hermes/Qwen tool calls in `text`, or None when it has none or any block is malformed (the text is
/// then plain content). A last block cut off before `</tool_call>` counts if its JSON is whole; text after
/// the calls is not content (as vLLM's Hermes parser).
pub fn parse_hermes(text: &str) -> Option<Parsed> {
    let start = text.find(CALL_START)?;
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(at) = rest.find(CALL_START) {
        let body = &rest[at + CALL_START.len()..];
        let (inner, after) = match body.find(CALL_END) {
            Some(end) => (&body[..end], &body[end + CALL_END.len()..]),
            None => (body, ""),
        };
        calls.push(parse_call(inner)?);
        rest = after;
    }
    let content = text[..start].trim_end();
    Some(Parsed { content: (!content.is_empty()).then(|| content.to_owned()), calls })
}

fn parse_call(inner: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(inner.trim()).ok()?;
    let name = v.get("name")?.as_str().filter(|n| !n.is_empty())?.to_owned();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None => "{}".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(args @ Value::Object(_)) => args.to_string(),
        Some(_) => return None,
    };
    Some(ToolCall { name, arguments })
}

/// OpenAI's `tool_calls` list for `calls`, with fresh ids; `indexed` adds each call's `index` (as stream
/// deltas carry it).
pub fn tool_calls_json(calls: &[ToolCall], indexed: bool) -> Value {
    let list = calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut call = json!({
                "id": format!("call_{:024x}", rand::random::<u128>() >> 32),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            });
            if indexed {
                call["index"] = json!(i);
            }
            call
        })
        .collect();
    Value::Array(list)
}

/// A streamed choice's text as content up to its first `<tool_call>`, the rest kept for parsing at the
/// end; what it sends is exactly the content the whole text parses to, when it holds calls, and the whole
/// text otherwise.
#[derive(Default)]
pub struct ToolStream {
    /// Text not sent: a tail that may begin a call (or is whitespace before one), or everything from the
    /// first `<tool_call>` on.
    held: String,
    in_calls: bool,
}

impl ToolStream {
    /// Takes the next piece of text; returns the content that can be sent now.
    pub fn feed(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        if self.in_calls {
            return String::new();
        }
        if let Some(at) = self.held.find(CALL_START) {
            self.in_calls = true;
            let before = self.held[..at].trim_end().len();
            let out = self.held[..before].to_owned();
            self.held.replace_range(..before, "");
            return out;
        }
        // Hold back trailing whitespace and a tail that may begin `<tool_call>`.
        let partial = (1..CALL_START.len()).rev().find(|&k| self.held.ends_with(&CALL_START[..k])).unwrap_or(0);
        let keep_from = self.held[..self.held.len() - partial].trim_end().len();
        let out = self.held[..keep_from].to_owned();
        self.held.replace_range(..keep_from, "");
        out
    }

    /// At the end: the calls, or else the held text, the content's last piece (maybe empty).
    pub fn finish(self) -> Result<Vec<ToolCall>, String> {
        match self.in_calls.then(|| parse_hermes(&self.held)).flatten() {
            Some(p) => Ok(p.calls),
            None => Err(self.held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall { name: name.into(), arguments: arguments.into() }
    }

    #[test]
    fn hermes_markup_becomes_tool_calls() {
        let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n\
                    </tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": \"{}\"}\n</tool_call>";
        let p = parse_hermes(text).unwrap();
        assert_eq!(p.content.as_deref(), Some("Let me look."));
        assert_eq!(p.calls, [call("get_weather", r#"{"city":"Paris"}"#), call("now", "{}")]);
        let bare = parse_hermes("<tool_call>{\"name\": \"f\"}</tool_call>").unwrap();
        assert_eq!((bare.content, bare.calls), (None, vec![call("f", "{}")]));
        // A last block cut off after its JSON, and `parameters` for `arguments` (some Hermes models).
        let cut = parse_hermes("<tool_call>\n{\"name\": \"f\", \"parameters\": {\"x\": [1, 2]}}\n").unwrap();
        assert_eq!(cut.calls, [call("f", r#"{"x":[1,2]}"#)]);
    }

    #[test]
    fn malformed_markup_is_plain_content() {
        for text in [
            "no calls at all",
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}\n</tool_call>",
            "<tool_call>not json</tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": 5}</tool_call>",
            "<tool_call>{\"name\": \"f\"}</tool_call><tool_call>{\"name\": </tool_call>",
            "<tool_call>\n{\"name\": \"f\", \"argu",
        ] {
            assert_eq!(parse_hermes(text), None, "{text:?}");
        }
    }

    /// Streams `text` in pieces of `size` bytes (on char boundaries) and returns what was sent and the end.
    fn stream(text: &str, size: usize) -> (String, Result<Vec<ToolCall>, String>) {
        let mut s = ToolStream::default();
        let mut sent = String::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(size) {
            sent.push_str(&s.feed(&piece.iter().collect::<String>()));
        }
        (sent, s.finish())
    }

    #[test]
    fn a_stream_sends_the_content_the_whole_text_parses_to() {
        let with_calls =
            "Checking <the> weather. \n<tool_call>\n{\"name\": \"w\", \"arguments\": {\"c\": \"<x>\"}}\n</tool_call>";
        let plain = "A <tool_ call> look-alike, and <tool_call>broken";
        for size in 1..12 {
            let (sent, end) = stream(with_calls, size);
            let p = parse_hermes(with_calls).unwrap();
            assert_eq!((Some(sent), end), (p.content, Ok(p.calls)), "pieces of {size}");
            let (sent, end) = stream(plain, size);
            assert_eq!(sent + &end.unwrap_err(), plain, "pieces of {size}");
            let (sent, end) = stream("just text < and more  ", size);
            assert_eq!(sent + &end.unwrap_err(), "just text < and more  ");
        }
    }

    #[test]
    fn templates_say_which_format() {
        assert_eq!(ToolFormat::of("{% if tools %}...<tool_call>...{% endif %}"), Ok(ToolFormat::Hermes));
        assert!(ToolFormat::of("{% if tools %}{{ tools | tojson }}{% endif %}").unwrap_err().contains("cannot parse"));
        assert!(ToolFormat::of("{% for m in messages %}{{ m.content }}{% endfor %}").unwrap_err().contains("no tool"));
    }

    #[test]
    fn tool_choice_and_tools_are_validated() {
        let hermes = Ok(ToolFormat::Hermes);
        let f = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
        let parse = |tools: Value, choice: Value| {
            let tools: Option<Vec<Value>> = serde_json::from_value(tools).unwrap();
            let choice = (!choice.is_null()).then_some(choice);
            Tools::parse(tools, choice, &hermes).map(|t| t.map(|t| t.choice))
        };
        assert_eq!(parse(json!([f]), Value::Null).unwrap(), Some(Choice::Auto));
        assert_eq!(parse(json!([f]), json!("required")).unwrap(), Some(Choice::Required));
        let named = json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(parse(json!([f]), named).unwrap(), Some(Choice::Named("f".into())));
        assert_eq!(parse(Value::Null, json!("none")).unwrap(), None);
        for (tools, choice) in [
            (Value::Null, json!("auto")),
            (json!([f]), json!("sometimes")),
            (json!([f]), json!({"type": "function", "function": {"name": "g"}})),
            (json!([{"type": "function", "function": {}}]), Value::Null),
            (json!([{"type": "code", "function": {"name": "f"}}]), Value::Null),
            (json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]), Value::Null),
        ] {
            assert!(parse(tools.clone(), choice.clone()).is_err(), "{tools} {choice}");
        }
        let none = Err("no tool support".to_string());
        assert!(Tools::parse(Some(vec![f]), None, &none).unwrap_err().message.contains("no tool support"));
    }
}
