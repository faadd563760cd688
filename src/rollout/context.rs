//! Token-level chat context of one agent: what the engine is fed, kept as token ids and only ever
//! appended to, so every action is trained on exactly the ids it was sampled from (paper notes §8,
//! items 1 and 2: the reference code re-tokenised text and gave later actions the wrong prompt).
//!
//! - Start: the agent's messages through the chat template with the generation prompt ([`Tokenizer::encode_chat`]).
//! - An action: its generated ids verbatim (the stop token included when one ended it).
//! - A tool observation: only the template's *delta* for that turn is tokenised, never earlier text. The
//!   delta is what the template writes after the assistant's end-of-turn token up to and including the next
//!   generation prompt; it comes from the model's own template (see [`observation_delta`]), so ChatML
//!   (SmolLM2, Qwen), Llama 3, Gemma and other formats all work. The observation takes the role the template
//!   has for tool output ([`observation_role`]): Qwen2.5/Qwen3 wrap it in `<tool_response>` inside a user turn,
//!   Llama 3.1 writes an `ipython` turn; a template without a tool role gets a plain user turn, as MAPPA's
//!   pipeline builds it. A truncated action (no stop token) is first closed with the template's end-of-turn
//!   token.
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{bail, Context, Result};

/// Placeholder messages of the probe conversation; unlikely to occur in any template's own text.
const USER_MARK: &str = "MAPPA-PROBE-USER-7d1f";
const ASSISTANT_MARK: &str = "MAPPA-PROBE-ASSISTANT-7d1f";

/// The template text of one tool observation, as it follows a finished assistant turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnDelta {
    /// Everything after the assistant's end-of-turn token, through the next generation prompt.
    pub text: String,
    /// The token the template ends an assistant turn with (appended when an action was truncated).
    pub end_of_turn: u32,
}

/// The role a tool observation is given: `tool` when the chat template names that role (it has markup for
/// tool output), else `user`: a template without one would write `tool` verbatim, a role the model never saw.
pub fn observation_role(tok: &Tokenizer) -> &'static str {
    let template = tok.chat_template();
    if template.contains("\"tool\"") || template.contains("'tool'") {
        "tool"
    } else {
        "user"
    }
}

/// Derives the delta for a tool observation `content` from the chat template: renders
/// `[user, assistant placeholder, observation]` (in [`observation_role`]) with the generation prompt, finds the first stop token
/// the template writes after the placeholder (its end of turn; only whitespace may come between), and
/// returns the text after it. The real content is rendered in place, so templates that transform it
/// (trimming, wrapping) are honoured.
pub fn observation_delta(tok: &Tokenizer, content: &str) -> Result<TurnDelta> {
    let messages = [
        ChatMessage::new("user", USER_MARK),
        ChatMessage::new("assistant", ASSISTANT_MARK),
        ChatMessage::new(observation_role(tok), content),
    ];
    let rendered = tok.apply_chat_template(&messages, true)?;
    let Some(at) = rendered.find(ASSISTANT_MARK) else {
        bail!("the chat template does not render assistant messages verbatim; cannot derive the user-turn format");
    };
    let after = at + ASSISTANT_MARK.len();
    let mut best: Option<(usize, usize, u32)> = None;
    for &id in tok.stop_ids() {
        let text = tok.decode(&[id], false)?;
        if text.is_empty() {
            continue;
        }
        if let Some(pos) = rendered[after..].find(&text) {
            if best.is_none_or(|(p, _, _)| pos < p) {
                best = Some((pos, text.len(), id));
            }
        }
    }
    let Some((pos, len, end_of_turn)) = best else {
        bail!("the chat template ends assistant turns with none of the stop tokens {:?}", tok.stop_ids());
    };
    let between = &rendered[after..after + pos];
    if !between.trim().is_empty() {
        bail!("the chat template writes {between:?} between an assistant message and its end-of-turn token");
    }
    Ok(TurnDelta { text: rendered[after + pos + len..].to_string(), end_of_turn })
}

/// The growing token context of one agent in one episode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatContext {
    ids: Vec<u32>,
}

impl ChatContext {
    /// The chat-formatted `messages` followed by the generation prompt.
    pub fn start(tok: &Tokenizer, messages: &[ChatMessage]) -> Result<ChatContext> {
        Ok(ChatContext { ids: tok.encode_chat(messages).context("encoding the agent prompt")? })
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends an action's generated ids verbatim, then the tool observation `content` (closing the action
    /// with the end-of-turn token first when it did not end with a stop token), ending with the
    /// generation prompt for the next action.
    pub fn push_observation(&mut self, tok: &Tokenizer, action: &[u32], content: &str) -> Result<()> {
        let delta = observation_delta(tok, content)?;
        self.ids.extend_from_slice(action);
        if !action.last().is_some_and(|t| tok.stop_ids().contains(t)) {
            self.ids.push(delta.end_of_turn);
        }
        self.ids.extend(tok.encode(&delta.text, false)?);
        Ok(())
    }
}
