//! Running many episodes together, stage by stage: for each agent in order, for each of its turns, one
//! batched generation call over every episode whose agent is still acting, then the tool runs (in
//! parallel across episodes), then the contexts grow for the next turn.
use super::context::ChatContext;
use super::generator::{GenRequest, Generator};
use super::prompt::{AgentPrompts, PromptInputs};
use super::text::{extract_python_code, strip_think};
use super::workdir::{agent_dir, episode_dir, fresh_episode_dir, list_files, stage_files};
use super::{ActionRecord, Episode, SkippedAction};
use crate::data::{derive_seed, Task};
use crate::dsbench::{grade_submission, Grade, SUBMISSION_FILE};
use crate::engine::Generation;
use crate::grade::grade;
use crate::run_config::{RunConfig, Tool, WorkdirScope};
use crate::sample::SamplingParams;
use crate::sandbox::{host_failure, run_python};
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Which sampling temperature applies: training rollouts or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Train,
    Eval,
}

/// What [`run_episodes`] calls with each completed action: the episode's position, the episode, its task.
pub type OnAction<'a> = dyn FnMut(usize, &Episode, &Task) -> Result<()> + 'a;

/// One episode while it runs.
struct Live<'t> {
    ep: Episode,
    task: &'t Task,
    /// Each agent's last tool observation ("" when none).
    tool_results: Vec<String>,
}

/// Runs `samples_per_task` episodes of the whole pipeline for every `(task_index, task)`. `engines[i]`
/// generates for agent `i`, whose contexts `toks[i]` (its own tokenizer and chat template) builds. Episodes
/// come back task by task, samples in order; episode `n` of that order works in `<work_root>/ep-<n>`. Errors: engine, template or tokenizer failures, or a working directory that
/// cannot be made; a prompt over `rl.max_prompt_tokens` is not an error but a [`SkippedAction`], and a sandbox
/// that fails on the host is the action's tool error ([`host_failure`]).
///
/// `on_action(n, episode, task)` is called as soon as an action is complete (its tool run included), with
/// the episode so far (the action is its last) and its position `n` in the returned order, so the coach can
/// score it while the rollout goes on; an error from it ends the rollout.
#[allow(clippy::too_many_arguments)] // the rollout's inputs, each needed
pub fn run_episodes(
    engines: &[&dyn Generator],
    toks: &[&Tokenizer],
    cfg: &RunConfig,
    tasks: &[(usize, &Task)],
    samples_per_task: usize,
    phase: Phase,
    seed: u64,
    work_root: &Path,
    on_action: &mut OnAction,
) -> Result<Vec<Episode>> {
    if cfg.agents.is_empty() {
        bail!("the run configuration has no agents");
    }
    if engines.len() != cfg.agents.len() || toks.len() != cfg.agents.len() {
        bail!(
            "{} engines and {} tokenizers for {} agents: each agent needs its own",
            engines.len(),
            toks.len(),
            cfg.agents.len()
        );
    }
    let prompts = AgentPrompts::new(cfg)?;
    let mut live = Vec::with_capacity(tasks.len() * samples_per_task);
    for &(task_index, task) in tasks {
        for sample in 0..samples_per_task {
            let workdir = episode_dir(work_root, live.len());
            fresh_episode_dir(&workdir)?;
            let ep = Episode {
                task_index,
                sample,
                actions: Vec::new(),
                outputs: Vec::new(),
                skipped: Vec::new(),
                workdir,
                final_answer_correct: None,
                submission: None,
            };
            live.push(Live { ep, task, tool_results: Vec::new() });
        }
    }
    for (i, engine) in engines.iter().enumerate() {
        run_agent(*engine, toks[i], cfg, &prompts, i, phase, seed, &mut live, on_action)?;
    }
    Ok(live.into_iter().map(|l| finish(cfg, l)).collect())
}

/// All turns of agent `i` in every episode.
#[allow(clippy::too_many_arguments)]
fn run_agent(
    engine: &dyn Generator,
    tok: &Tokenizer,
    cfg: &RunConfig,
    prompts: &AgentPrompts,
    i: usize,
    phase: Phase,
    seed: u64,
    live: &mut [Live],
    on_action: &mut OnAction,
) -> Result<()> {
    let agent = &cfg.agents[i];
    let uses_python = agent.tools.contains(&Tool::Python);
    let s = cfg.sampling(i);
    let temperature = match phase {
        Phase::Train => s.temperature,
        Phase::Eval => s.eval_temperature,
    };
    let dirs: Vec<PathBuf> = live.iter().map(|l| agent_dir(&l.ep.workdir, cfg.sandbox.workdir, &agent.name)).collect();
    let mut contexts: Vec<Option<ChatContext>> = Vec::with_capacity(live.len());
    // A shared directory is staged once, before the first agent; each agent's own, as it is made.
    let stage = i == 0 || cfg.sandbox.workdir == WorkdirScope::Agent;
    for (l, dir) in live.iter().zip(&dirs) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating working directory {}", dir.display()))?;
        if stage {
            stage_files(l.task, &cfg.data, dir)?;
        }
        let files = list_files(dir)?;
        let names = cfg.agents[..i].iter().map(|a| a.name.as_str());
        let inputs = PromptInputs {
            previous: names.clone().zip(l.ep.outputs.iter().map(String::as_str)).collect(),
            tool_results: names.zip(l.tool_results.iter().map(String::as_str)).collect(),
            files: &files,
        };
        let prompt = prompts.render(cfg, i, l.task, &inputs)?;
        contexts.push(Some(ChatContext::start(tok, &[ChatMessage::new("user", &prompt)])?));
    }
    for l in live.iter_mut() {
        l.tool_results.push(String::new());
    }
    let sandbox = cfg.sandbox.to_sandbox_config();
    for turn in 0..agent.max_actions as usize {
        let mut acting = Vec::new();
        let mut reqs = Vec::new();
        for (e, slot) in contexts.iter_mut().enumerate() {
            let Some(ctx) = slot else { continue };
            if ctx.len() > cfg.rl.max_prompt_tokens {
                let reason = format!(
                    "prompt of {} tokens exceeds rl.max_prompt_tokens ({})",
                    ctx.len(),
                    cfg.rl.max_prompt_tokens
                );
                live[e].ep.skipped.push(SkippedAction { agent: i, turn, prompt_tokens: ctx.len(), reason });
                *slot = None;
                continue;
            }
            let ep = &live[e].ep;
            let params = SamplingParams {
                temperature: temperature as f32,
                top_k: 0,
                top_p: s.top_p as f32,
                seed: derive_seed(&[seed, ep.task_index as u64, ep.sample as u64, i as u64, turn as u64]),
                top_logprobs: 0,
            };
            reqs.push(GenRequest { prompt: ctx.ids().to_vec(), max_new_tokens: s.max_new_tokens, params });
            acting.push(e);
        }
        if reqs.is_empty() {
            break;
        }
        let gens = engine
            .generate_batch(&reqs, tok.stop_ids())
            .with_context(|| format!("generating for agent `{}`, turn {turn}", agent.name))?;
        ensure!(gens.len() == reqs.len(), "engine returned {} generations for {} requests", gens.len(), reqs.len());
        let mut records = Vec::with_capacity(gens.len());
        for (req, g) in reqs.into_iter().zip(gens) {
            records.push(record(tok, i, turn, req.prompt, g, uses_python)?);
        }
        // A host-side failure (no interpreter, an unwritable directory, a failed spawn) is the action's tool
        // error: the agent sees it, the coach scores it, the run counts it and goes on.
        let last_agent = i + 1 == cfg.agents.len();
        let tasks: Vec<&Task> = acting.iter().map(|&e| live[e].task).collect();
        records.par_iter_mut().zip(acting.par_iter().zip(tasks)).for_each(|(rec, (&e, task))| {
            let dir = &dirs[e];
            if let Some(code) = &rec.code {
                rec.tool_output = Some(match run_python(code, dir, &sandbox) {
                    Ok(out) => out.render(),
                    Err(err) => host_failure(&err),
                });
            }
            rec.files = list_files(dir).unwrap_or_default();
            if last_agent {
                rec.submission = grade_submission_in(task, cfg, dir);
            }
        });
        for (rec, e) in records.into_iter().zip(acting) {
            let slot = &mut contexts[e];
            match (&rec.tool_output, slot.as_mut()) {
                (Some(out), Some(ctx)) if turn + 1 < agent.max_actions as usize => {
                    ctx.push_observation(tok, &rec.tokens, out)?
                }
                _ => *slot = None,
            }
            if let Some(out) = &rec.tool_output {
                live[e].tool_results[i] = out.clone();
            }
            live[e].ep.actions.push(rec);
            on_action(e, &live[e].ep, live[e].task)?;
        }
    }
    for l in live.iter_mut() {
        let last = l.ep.actions.iter().rev().find(|a| a.agent == i).map_or("", |a| a.text.as_str());
        let output = if agent.strip_think { strip_think(last) } else { last.to_string() };
        l.ep.outputs.push(output);
    }
    Ok(())
}

/// The record of one generated action (the tool fields are filled in after the sandbox runs).
fn record(
    tok: &Tokenizer,
    agent: usize,
    turn: usize,
    context: Vec<u32>,
    g: Generation,
    tools: bool,
) -> Result<ActionRecord> {
    let text = tok.decode(&g.tokens, true)?;
    let code = if tools { extract_python_code(&text) } else { None };
    Ok(ActionRecord {
        agent,
        turn,
        context,
        tokens: g.tokens,
        logprobs: g.logprobs,
        finish: g.finish,
        text,
        code,
        tool_output: None,
        files: Vec::new(),
        submission: None,
    })
}

/// A DSBench task's `submission.csv` in `dir` graded with its metric; None for other tasks.
fn grade_submission_in(task: &Task, cfg: &RunConfig, dir: &Path) -> Option<Grade> {
    let info = task.info.as_ref()?;
    let answer_dir = cfg.data.files_root.join(task.answers.first()?);
    Some(grade_submission(&dir.join(SUBMISSION_FILE), &answer_dir, info))
}

/// Grades the final output: a DSBench task's submission, else the last agent's answer.
fn finish(cfg: &RunConfig, l: Live) -> Episode {
    let mut ep = l.ep;
    let last = cfg.agents.len() - 1;
    if l.task.info.is_some() {
        // Nothing changes the files after the last agent's last action, which graded them already.
        let graded = ep.actions.iter().rev().find(|a| a.agent == last).and_then(|a| a.submission.clone());
        ep.submission = graded.or_else(|| {
            grade_submission_in(l.task, cfg, &agent_dir(&ep.workdir, cfg.sandbox.workdir, &cfg.agents[last].name))
        });
        ep.final_answer_correct = ep.submission.as_ref().map(|g| g.valid);
        return ep;
    }
    let gradable = !l.task.answers.is_empty() && cfg.agents[last].artifacts.is_empty();
    ep.final_answer_correct = gradable.then(|| {
        let output = ep.outputs.get(last).map_or("", String::as_str);
        l.task.answers.iter().any(|a| grade(output, a, cfg.data.last_number_fallback))
    });
    ep
}
