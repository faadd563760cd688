//! What the coach sees of one action: the agent, the task, the whole conversation the agent saw (its
//! context decoded with special tokens kept, so turn boundaries and tool turns are visible), its reply,
//! the tool output and the files. The ground truth goes only where [`RunConfig::coach_sees_ground_truth`]
//! allows it (by default only to the final agent, when `coach.ground_truth_to_final_agent` is set).
use super::Episode;
use crate::coach::CoachRequest;
use crate::data::Task;
use crate::run_config::RunConfig;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};

/// The coach request for `episode.actions[action_index]`. Several accepted answers are shown joined with
/// " or ".
pub fn coach_request(
    episode: &Episode,
    action_index: usize,
    cfg: &RunConfig,
    tok: &Tokenizer,
    task: &Task,
) -> Result<CoachRequest> {
    let Some(action) = episode.actions.get(action_index) else {
        bail!("action {action_index} does not exist (the episode has {})", episode.actions.len());
    };
    let Some(agent) = cfg.agents.get(action.agent) else {
        bail!(
            "action {action_index} belongs to agent {}, but the configuration has {}",
            action.agent,
            cfg.agents.len()
        );
    };
    // A DSBench task's answers name its answer directory; what the coach may see is the submission's grade.
    let truth = match (&task.info, &action.submission) {
        (Some(_), Some(grade)) => Some(grade.summary()),
        (Some(_), None) => None,
        (None, _) => (!task.answers.is_empty()).then(|| task.answers.join(" or ")),
    };
    let ground_truth = truth.filter(|_| cfg.coach_sees_ground_truth(action.agent));
    Ok(CoachRequest {
        agent_name: agent.name.clone(),
        agent_role: cfg.agent_role(action.agent).to_string(),
        task: task.text.clone(),
        agent_input: tok.decode(&action.context, false)?,
        agent_output: action.text.clone(),
        tool_output: action.tool_output.clone(),
        files: action.files.clone(),
        ground_truth,
        artifacts: agent.artifacts.clone(),
        truncated: action.finish == crate::engine::FinishReason::Length,
        submission: action.submission.clone(),
    })
}
