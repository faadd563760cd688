//! Coach prompts: the per-action scoring prompt (a minijinja template) and the one format retry.
//!
//! Template variables: `agent_name`, `agent_role`, `task`, `agent_input`, `agent_output`,
//! `tool_output` (already truncated, or "N/A (no tools used)"), `files` (a list of names) and
//! `ground_truth` (none unless the caller set it). Undefined variables are errors, and a template is
//! test-rendered when it is loaded, so a typo fails at start-up rather than mid-run.
use super::parse::{ParseError, SCORE_KEY};
use super::CoachRequest;
use crate::tokenizer::ChatMessage;
use anyhow::{Context, Result};
use minijinja::{context, Environment, UndefinedBehavior};

/// Default cap on the tool output shown to the coach, in characters.
pub const DEFAULT_TOOL_OUTPUT_LIMIT: usize = 2000;
/// What the coach sees when the action used no tool.
pub const NO_TOOL_OUTPUT: &str = "N/A (no tools used)";

/// The default prompt for the MathChat team (Problem Solver, Code Executor, Verifier), written from
/// the paraphrase in the paper notes, section 4.
pub const MATHCHAT_TEMPLATE: &str = r#"You coach a team of three language-model agents that solve competition math problems together. Every agent sees the problem.
- The Problem Solver reasons step by step towards a solution.
- The Code Executor writes Python code, which is run in a sandbox, to compute or check results.
- The Verifier reviews the team's work and states the team's final answer in \boxed{}.
The team succeeds only if the Verifier's final answer is correct. Each agent may write about 4,000 tokens per turn.

Score ONE action of ONE agent. Judge what this agent did with its role and with what it was shown; do not blame it for the mistakes of others.

## Problem
{{ task }}

## Agent
Name: {{ agent_name }}
Role: {{ agent_role }}

## What the agent saw
{{ agent_input }}

## What the agent wrote
{{ agent_output }}

## Tool output
{{ tool_output }}
{% if files %}
## Files present
{{ files | join(", ") }}
{% endif %}{% if ground_truth %}
## Reference answer
{{ ground_truth }}
{% endif %}
## How to score
- Did the agent do its job well, given its role and its input?
- How much does its output help the team reach a correct final answer?
- Are its reasoning steps and calculations correct?
- If it wrote code: is the code well formed and correct, and does it address the problem?
Be strict. 10: flawless and as useful as possible. 5: mixed. 0: useless or harmful.

Write a short analysis (a few sentences). Then end your reply with one line of exactly this form, where <number> is a number from 0 to 10:
PROCESS_SCORE: <number>"#;

/// A loaded coach prompt template plus the tool-output cap.
pub struct CoachPrompt {
    env: Environment<'static>,
    tool_output_limit: usize,
}

impl CoachPrompt {
    /// Loads `template`; fails on syntax errors and on variables it uses but the coach does not provide.
    pub fn new(template: &str, tool_output_limit: usize) -> Result<CoachPrompt> {
        let mut env = crate::template::environment();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_template_owned("coach", template.to_string()).context("coach prompt template")?;
        let prompt = CoachPrompt { env, tool_output_limit };
        let sample = CoachRequest {
            tool_output: Some("sample".into()),
            files: vec!["sample.csv".into()],
            ground_truth: Some("sample".into()),
            ..CoachRequest::default()
        };
        prompt.render(&sample).context("coach prompt template does not render")?;
        Ok(prompt)
    }

    /// The chat messages for scoring `req`: one user message.
    pub fn render(&self, req: &CoachRequest) -> Result<Vec<ChatMessage>> {
        let tool_output = match &req.tool_output {
            Some(out) => truncate_middle(out, self.tool_output_limit),
            None => NO_TOOL_OUTPUT.to_string(),
        };
        let text = self.env.get_template("coach")?.render(context! {
            agent_name => req.agent_name,
            agent_role => req.agent_role,
            task => req.task,
            agent_input => req.agent_input,
            agent_output => req.agent_output,
            tool_output => tool_output,
            files => req.files,
            ground_truth => req.ground_truth,
        })?;
        Ok(vec![ChatMessage::new("user", &text)])
    }
}

impl Default for CoachPrompt {
    /// The MathChat template with the default tool-output cap.
    fn default() -> CoachPrompt {
        // The built-in template is a constant that the tests render; failing here is a build defect.
        CoachPrompt::new(MATHCHAT_TEMPLATE, DEFAULT_TOOL_OUTPUT_LIMIT).expect("built-in coach template renders")
    }
}

/// The conversation for the single format retry: the first prompt, the unusable reply, and a message
/// that names the error and restates the required final line.
pub fn retry_messages(prompt: &[ChatMessage], reply: &str, error: &ParseError) -> Vec<ChatMessage> {
    let reply = if reply.trim().is_empty() { "(empty reply)" } else { reply };
    let reminder = format!(
        "Your reply could not be used: {error}.\n\
         Reply again: a short analysis, then end with exactly one line of this form, where <number> is a \
         plain number from 0 to 10 such as 7 or 6.5, and no other line starting with {SCORE_KEY}:\n\
         {SCORE_KEY}: <number>"
    );
    let mut messages = prompt.to_vec();
    messages.push(ChatMessage::new("assistant", reply));
    messages.push(ChatMessage::new("user", &reminder));
    messages
}

/// `text` cut to at most `limit` characters, keeping its head and tail (a traceback's last lines matter
/// as much as the first) around a marker that says how much was dropped.
pub fn truncate_middle(text: &str, limit: usize) -> String {
    let total = text.chars().count();
    if total <= limit {
        return text.to_string();
    }
    let head = limit / 2;
    let byte_at = |n: usize| text.char_indices().nth(n).map_or(text.len(), |(i, _)| i);
    let (head_end, tail_start) = (byte_at(head), byte_at(total - (limit - head)));
    format!("{}\n[... {} characters truncated ...]\n{}", &text[..head_end], total - limit, &text[tail_start..])
}
