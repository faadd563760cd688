//! A rule-based coach for verifiable tasks and tests: no model, just the grader.
//!
//! - The final agent (by name) gets 10 if its output grades correct against the request's ground truth,
//!   else 0. A final-agent request without ground truth is an error (the action goes unscored).
//! - Other agents get [`OtherAgents::Fixed`] score, or with [`OtherAgents::BoxedMatch`] 10 when their
//!   output boxes an answer equal to the ground truth and the default otherwise. BoxedMatch needs the
//!   caller to set `ground_truth` on non-final requests too; without it they get the default.
//! - [`OtherAgents::Process`] (the process coach of math pipelines) scores each action on what can be
//!   checked in it: an action that ran code gets 10 if its output's last number is the answer, 3 if it ran
//!   but printed something else, 0 if it failed; an action without code gets 10 for a correct answer, 2 for
//!   a wrong one, 0 for none or for a reply cut off at the token budget, its answer read as the final one
//!   is (the last `\boxed{}`, else with `last_number_fallback` the last number). It needs the ground truth on
//!   every request.
//! - [`OtherAgents::Artifacts`] (the DSBench pipeline's rule coach) scores every agent, the final one included,
//!   on what its action left: no code 0, failed code 2; code that ran gets, for the final agent, 6 + 4 x its
//!   submission's quality (`dsbench::Grade::quality`) when the submission is valid, else 3, and for the
//!   others 4 + 6 x the share of their required files (`artifacts`) present.
//!
//! The verdict is written as a `PROCESS_SCORE:` reply and goes through the same parser as a model's.
use super::parse::{MAX_SCORE, SCORE_KEY};
use super::{CoachBackend, CoachRequest};
use crate::grade::{extract_answer, grade};
use crate::sandbox::TOOL_ERROR;
use crate::tokenizer::ChatMessage;
use anyhow::{bail, ensure, Result};

/// How the rule coach scores agents other than the final one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OtherAgents {
    /// Always this score.
    Fixed(f32),
    /// 10 if the output's last `\boxed{}` matches the ground truth, else `default`.
    BoxedMatch { default: f32 },
    /// Each action's own checkable result (module docs).
    Process,
    /// Each action of a file-producing pipeline (DSBench) on what it left (module docs).
    Artifacts,
}

#[derive(Clone, Debug)]
pub struct RuleCoach {
    final_agent: String,
    others: OtherAgents,
    /// Passed to the grader: accept the last number when the final output has no box.
    last_number_fallback: bool,
}

impl RuleCoach {
    pub fn new(final_agent: &str, others: OtherAgents, last_number_fallback: bool) -> Result<RuleCoach> {
        let s = match others {
            OtherAgents::Fixed(s) | OtherAgents::BoxedMatch { default: s } => s,
            OtherAgents::Process | OtherAgents::Artifacts => 0.0,
        };
        ensure!((0.0..=MAX_SCORE as f32).contains(&s), "rule coach score {s} is outside [0, {MAX_SCORE}]");
        Ok(RuleCoach { final_agent: final_agent.to_string(), others, last_number_fallback })
    }

    /// The score for `req` and a one-line justification.
    fn verdict(&self, req: &CoachRequest) -> Result<(f32, &'static str)> {
        if self.others == OtherAgents::Artifacts {
            return Ok(artifacts_verdict(req));
        }
        let gold = req.ground_truth.as_deref();
        if req.agent_name == self.final_agent {
            let Some(gold) = gold else { bail!("rule coach: no ground truth for final agent {:?}", req.agent_name) };
            return Ok(if grade(&req.agent_output, gold, self.last_number_fallback) {
                (10.0, "the final answer is correct")
            } else {
                (0.0, "the final answer is wrong or missing")
            });
        }
        Ok(match self.others {
            OtherAgents::Fixed(s) => (s, "fixed score for non-final agents"),
            OtherAgents::BoxedMatch { default } => match gold {
                Some(gold) if grade(&req.agent_output, gold, false) => (10.0, "the boxed answer is correct"),
                _ => (default, "no correct boxed answer"),
            },
            OtherAgents::Artifacts => artifacts_verdict(req),
            OtherAgents::Process => {
                let Some(gold) = gold else {
                    bail!("rule coach: the process checks need the ground truth for agent {:?}", req.agent_name)
                };
                match &req.tool_output {
                    Some(out) => code_verdict(out, gold),
                    // Whatever number a cut-off reply ends on is not an answer it gave (LEARNING.md: paying for
                    // them taught the team to ramble).
                    None if req.truncated => (0.0, "it was cut off at the token budget before answering"),
                    None => answer_verdict(&req.agent_output, gold, self.last_number_fallback),
                }
            }
        })
    }
}

/// An action of a file-producing pipeline: no code 0 (the paper's rubric: text without executable code is a
/// critical failure), failed code 2; code that ran, for the final agent 6 + 4 x its submission's quality when
/// the submission is valid, else 3; for the others 4 + 6 x the share of their `artifacts` present (10 with
/// none required).
fn artifacts_verdict(req: &CoachRequest) -> (f32, &'static str) {
    let Some(out) = &req.tool_output else { return (0.0, "it wrote no code") };
    if out.contains(TOOL_ERROR) {
        return (2.0, "its code failed");
    }
    if let Some(grade) = &req.submission {
        return match grade.valid {
            true => {
                (6.0 + 4.0 * grade.quality() as f32, "its code ran and left a valid submission (6 + 4 x its quality)")
            }
            false => (3.0, "its code ran but left no valid submission"),
        };
    }
    if req.artifacts.is_empty() {
        return (10.0, "its code ran");
    }
    let present = req.artifacts.iter().filter(|a| req.files.contains(a)).count();
    let share = present as f32 / req.artifacts.len() as f32;
    (4.0 + 6.0 * share, "its code ran (4 + 6 x the share of its required files present)")
}

/// An action that ran code, by its rendered tool output: failed, ran, or printed the answer last.
fn code_verdict(tool_output: &str, gold: &str) -> (f32, &'static str) {
    if tool_output.contains(TOOL_ERROR) {
        return (0.0, "its code failed");
    }
    // The sandbox's own notes (truncation, "[no output]") are lines in brackets; the program's output is the rest.
    let printed: Vec<&str> = tool_output.lines().filter(|l| !(l.starts_with('[') && l.ends_with(']'))).collect();
    match grade(&printed.join("\n"), gold, true) {
        true => (10.0, "its code printed the answer"),
        false => (3.0, "its code ran but did not print the answer"),
    }
}

/// An action without code, by its answer: the last `\boxed{}`, or with `last_number_fallback` (as the final
/// answer is graded) the last number.
fn answer_verdict(output: &str, gold: &str, last_number_fallback: bool) -> (f32, &'static str) {
    match (grade(output, gold, last_number_fallback), extract_answer(output, last_number_fallback).is_some()) {
        (true, _) => (10.0, "its answer is correct"),
        (false, true) => (2.0, "its answer is wrong"),
        (false, false) => (0.0, "it gave no answer"),
    }
}

impl CoachBackend for RuleCoach {
    fn complete(&self, _messages: &[ChatMessage]) -> Result<String> {
        bail!("the rule coach scores a CoachRequest (use it through Coach), not free-form messages")
    }

    fn reply(&self, req: &CoachRequest, _messages: &[ChatMessage]) -> Result<String> {
        let (score, why) = self.verdict(req)?;
        Ok(format!("Rule-based check: {why}.\n{SCORE_KEY}: {score}"))
    }
}
