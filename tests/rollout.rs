//! Multi-agent rollouts (`mappa::rollout`) on the MathChat preset: token contexts (exact prefixes, the
//! template-derived tool turn, closing truncated actions), batching per agent turn, seeds, prompts fed by
//! earlier agents, think stripping, grading and coach requests. A scripted engine (fixed replies, every
//! request recorded) drives the tool path deterministically; tiny random llamas with SmolLM2's real
//! ChatML tokenizer check the CPU engine and reproducibility.
mod common;
use common::scripted::Scripted;

use mappa::cpu::CpuBackend;
use mappa::data::Task;
use mappa::engine::FinishReason;
use mappa::model::Model;
use mappa::rollout::{
    coach_request, extract_python_code, observation_delta, observation_role, run_episodes, strip_think, Episode,
    Generator, Phase,
};
use mappa::run_config::{RunConfig, WorkdirScope};
use mappa::tokenizer::{Tokenizer, TokenizerSpec};
use std::path::Path;

const CODE_REPLY: &str = "Let me compute it.\n```python\nprint(6*7)\n```<|im_end|>";

fn tok() -> &'static Tokenizer {
    common::chat_tokenizer()
}

fn enc(text: &str) -> Vec<u32> {
    tok().encode(text, false).unwrap()
}

/// The MathChat preset with small budgets.
fn config() -> RunConfig {
    let mut cfg = RunConfig::preset("mathchat").unwrap();
    cfg.rl.max_new_tokens = 24;
    cfg.sandbox.timeout_s = 10.0;
    cfg.sandbox.cpu_seconds = 10;
    cfg
}

fn task(id: &str, answer: &str) -> Task {
    Task {
        id: id.into(),
        text: format!("Compute 6*7 ({id})."),
        answers: vec![answer.into()],
        record: serde_json::json!({"id": id, "problem": "Compute 6*7.", "answer": answer}),
        info: None,
    }
}

/// Solver, Code Executor (code, then a boxed answer), Verifier.
fn team() -> [Scripted; 3] {
    [
        Scripted::fixed("Draft: the answer is \\boxed{41}.<|im_end|>"),
        Scripted::new(|call, _| if call == 0 { CODE_REPLY.into() } else { "So \\boxed{42}.<|im_end|>".into() }),
        Scripted::fixed("Checked. **\\boxed{42}**<|im_end|>"),
    ]
}

fn run(engines: &[Scripted; 3], cfg: &RunConfig, tasks: &[Task], samples: usize, root: &Path) -> Vec<Episode> {
    let engines: Vec<&dyn Generator> = engines.iter().map(|e| e as &dyn Generator).collect();
    let tasks: Vec<(usize, &Task)> = tasks.iter().enumerate().collect();
    run_episodes(&engines, &[tok(); 3], cfg, &tasks, samples, Phase::Train, 7, root, &mut |_, _, _| Ok(())).unwrap()
}

fn actions_of(ep: &Episode, agent: usize) -> Vec<&mappa::rollout::ActionRecord> {
    ep.actions.iter().filter(|a| a.agent == agent).collect()
}

#[test]
fn tool_turn_extends_the_context_token_for_token() {
    let dir = tempfile::tempdir().unwrap();
    let engines = team();
    let eps = run(&engines, &config(), &[task("a", "42"), task("b", "42")], 2, dir.path());
    assert_eq!(eps.len(), 4);
    for ep in &eps {
        let coder = actions_of(ep, 1);
        assert_eq!(coder.len(), 2, "code, then the answer after seeing the output");
        let (a0, a1) = (coder[0], coder[1]);
        assert_eq!(a0.code.as_deref(), Some("print(6*7)"));
        assert_eq!(a0.tool_output.as_deref(), Some("42\n"));
        assert_eq!(a0.finish, FinishReason::Stop);
        let delta = observation_delta(tok(), "42\n").unwrap();
        let expected = [a0.context.clone(), a0.tokens.clone(), enc(&delta.text)].concat();
        assert_eq!(a1.context, expected);
        let shown = tok().decode(&a1.context, false).unwrap();
        assert!(shown.ends_with("```<|im_end|>\n<|im_start|>user\n42\n<|im_end|>\n<|im_start|>assistant\n"), "{shown}");
        assert_eq!(a1.code, None);
        assert_eq!(a1.tool_output, None);
    }
}

#[test]
fn contexts_are_exactly_what_the_engine_received_one_call_per_agent_turn() {
    let dir = tempfile::tempdir().unwrap();
    let engines = team();
    let eps = run(&engines, &config(), &[task("a", "42"), task("b", "7"), task("c", "1")], 2, dir.path());
    for (i, engine) in engines.iter().enumerate() {
        let calls = engine.calls();
        assert_eq!(calls.len(), config().agents[i].max_actions as usize, "agent {i}: one call per turn");
        for (turn, reqs) in calls.iter().enumerate() {
            assert_eq!(reqs.len(), eps.len(), "agent {i} turn {turn}: every episode in one batch");
            for (req, ep) in reqs.iter().zip(&eps) {
                let action = ep.actions.iter().find(|a| a.agent == i && a.turn == turn).unwrap();
                assert_eq!(req.prompt, action.context);
                assert_eq!(req.max_new_tokens, 24);
            }
        }
    }
    // Seeds differ between episodes, agents and turns.
    let mut seeds: Vec<u64> = engines.iter().flat_map(|e| e.calls()).flatten().map(|r| r.params.seed).collect();
    let n = seeds.len();
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(seeds.len(), n);
}

#[test]
fn only_episodes_still_acting_join_the_next_turn() {
    let dir = tempfile::tempdir().unwrap();
    let mut engines = team();
    // First turn: even requests write code, odd ones answer directly (and are done).
    engines[1] =
        Scripted::new(
            |call, r| {
                if call == 0 && r % 2 == 0 {
                    CODE_REPLY.into()
                } else {
                    "\\boxed{42}<|im_end|>".into()
                }
            },
        );
    let eps = run(&engines, &config(), &[task("a", "42"), task("b", "42")], 2, dir.path());
    let calls = engines[1].calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].len(), 2);
    for (e, ep) in eps.iter().enumerate() {
        assert_eq!(actions_of(ep, 1).len(), if e % 2 == 0 { 2 } else { 1 });
    }
    assert_eq!(calls[1][0].prompt, actions_of(&eps[0], 1)[1].context);
    assert_eq!(calls[1][1].prompt, actions_of(&eps[2], 1)[1].context);
}

#[test]
fn a_sandbox_failing_on_the_host_is_a_tool_error_and_the_rollout_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let engines = team();
    let mut cfg = config();
    cfg.sandbox.python = "/nonexistent/python3".into();
    let eps = run(&engines, &cfg, &[task("a", "42")], 1, dir.path());
    let coder = actions_of(&eps[0], 1);
    assert_eq!(coder.len(), 2, "the Code Executor gets its next turn");
    let out = coder[0].tool_output.as_deref().unwrap();
    assert!(out.starts_with(mappa::sandbox::HOST_FAILURE) && out.contains("/nonexistent/python3"), "{out}");
    let shown = tok().decode(&coder[1].context, false).unwrap();
    assert!(shown.contains(mappa::sandbox::HOST_FAILURE), "the agent sees the failure: {shown}");
    assert_eq!(actions_of(&eps[0], 2).len(), 1, "the Verifier still acts");
}

#[test]
fn truncated_action_is_closed_before_the_tool_turn() {
    let dir = tempfile::tempdir().unwrap();
    let mut engines = team();
    engines[1] = Scripted::new(|call, _| if call == 0 { "```python\nprint(6*7)\n```".into() } else { "ok".into() });
    let eps = run(&engines, &config(), &[task("a", "42")], 1, dir.path());
    let coder = actions_of(&eps[0], 1);
    let (a0, a1) = (coder[0], coder[1]);
    assert_eq!(a0.finish, FinishReason::Length);
    assert_eq!(a0.tool_output.as_deref(), Some("42\n"), "a closed fence runs even in a truncated reply");
    let im_end = tok().token_id("<|im_end|>").unwrap();
    let delta = observation_delta(tok(), "42\n").unwrap();
    assert_eq!(delta.end_of_turn, im_end);
    assert_eq!(a1.context, [a0.context.clone(), a0.tokens.clone(), vec![im_end], enc(&delta.text)].concat());
    assert_eq!(a1.finish, FinishReason::Length);
}

#[test]
fn later_prompts_carry_earlier_outputs_and_tool_results() {
    let dir = tempfile::tempdir().unwrap();
    let engines = team();
    let eps = run(&engines, &config(), &[task("a", "42")], 1, dir.path());
    let ep = &eps[0];
    let show = |agent: usize| tok().decode(&actions_of(ep, agent)[0].context, false).unwrap();
    assert!(show(0).contains("Compute 6*7 (a)."));
    assert!(show(1).contains("The Problem Solver's draft:\nDraft: the answer is \\boxed{41}."), "{}", show(1));
    let verifier = show(2);
    assert!(verifier.contains("The Code Executor's reply:\nSo \\boxed{42}."), "{verifier}");
    assert!(verifier.contains("Output of its last code run:\n42"), "{verifier}");
    assert_eq!(ep.outputs, ["Draft: the answer is \\boxed{41}.", "So \\boxed{42}.", "Checked. **\\boxed{42}**"]);
}

#[test]
fn strip_think_hides_reasoning_from_later_agents() {
    let dir = tempfile::tempdir().unwrap();
    let mut engines = team();
    engines[0] = Scripted::fixed("<think>secret plan</think>The answer is \\boxed{41}.<|im_end|>");
    let mut cfg = config();
    cfg.agents[0].strip_think = true;
    let eps = run(&engines, &cfg, &[task("a", "42")], 1, dir.path());
    let coder_prompt = tok().decode(&actions_of(&eps[0], 1)[0].context, false).unwrap();
    assert!(!coder_prompt.contains("secret plan"), "{coder_prompt}");
    assert!(coder_prompt.contains("The Problem Solver's draft:\nThe answer is \\boxed{41}."));
    assert_eq!(eps[0].outputs[0], "The answer is \\boxed{41}.");
    assert!(eps[0].actions[0].text.contains("secret plan"), "the action itself keeps its reasoning");

    assert_eq!(strip_think("<think>a</think> x <think>b</think>y"), "x y");
    assert_eq!(strip_think("planning...</think>\n\nanswer"), "answer");
    assert_eq!(strip_think("answer <think>cut off"), "answer");
    assert_eq!(strip_think("no reasoning"), "no reasoning");
}

#[test]
fn grading_uses_the_final_agents_boxed_answer() {
    let dir = tempfile::tempdir().unwrap();
    let engines = team();
    let multi = Task { answers: vec!["7".into(), "42".into()], ..task("c", "7") };
    let eps = run(&engines, &config(), &[task("a", "42"), task("b", "41"), multi], 1, dir.path());
    let verdicts: Vec<_> = eps.iter().map(|e| e.final_answer_correct).collect();
    assert_eq!(verdicts, [Some(true), Some(false), Some(true)], "the solver's 41 does not count, only the verifier's");
}

#[test]
fn coach_requests_give_ground_truth_only_to_the_last_agent() {
    let dir = tempfile::tempdir().unwrap();
    let engines = team();
    let t = task("a", "42");
    let eps = run(&engines, &config(), std::slice::from_ref(&t), 1, dir.path());
    let ep = &eps[0];
    assert_eq!(ep.actions.len(), 4);
    let cfg = config();
    for (k, action) in ep.actions.iter().enumerate() {
        let req = coach_request(ep, k, &cfg, tok(), &t).unwrap();
        assert_eq!(req.agent_name, cfg.agents[action.agent].name);
        assert_eq!(req.agent_role, cfg.agent_role(action.agent));
        assert_eq!(req.task, t.text);
        assert_eq!(req.agent_input, tok().decode(&action.context, false).unwrap());
        assert!(req.agent_input.contains("<|im_start|>user\n"), "special tokens are kept for the coach");
        assert_eq!(req.agent_output, action.text);
        assert_eq!(req.tool_output, action.tool_output);
        assert_eq!(req.truncated, action.finish == FinishReason::Length);
        assert_eq!(req.ground_truth.as_deref(), (action.agent == 2).then_some("42"), "action {k}");
    }
    assert!(coach_request(ep, 1, &cfg, tok(), &t).unwrap().tool_output.is_some());
    let mut no_gt = config();
    no_gt.coach.ground_truth_to_final_agent = false;
    assert_eq!(coach_request(ep, 3, &no_gt, tok(), &t).unwrap().ground_truth, None);
    assert!(coach_request(ep, 4, &cfg, tok(), &t).is_err());
}

#[test]
fn prompt_over_the_limit_is_skipped_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let engines = team();
    let mut cfg = config();
    cfg.rl.max_prompt_tokens = 40;
    let eps = run(&engines, &cfg, &[task("a", "42")], 2, dir.path());
    assert!(engines.iter().all(|e| e.calls().is_empty()));
    for ep in &eps {
        assert!(ep.actions.is_empty());
        assert_eq!(ep.skipped.len(), 3);
        assert!(ep.skipped[0].reason.contains("rl.max_prompt_tokens (40)"), "{}", ep.skipped[0].reason);
        assert!(ep.skipped[0].prompt_tokens > 40);
        assert_eq!(ep.outputs, ["", "", ""]);
        assert_eq!(ep.final_answer_correct, Some(false));
    }
}

#[test]
fn workdirs_follow_the_sandbox_scope() {
    let mut engines = team();
    engines[1] = Scripted::fixed("```python\nopen('out.txt', 'w').write('x')\nprint('saved')\n```<|im_end|>");
    let mut cfg = config();
    cfg.agents[2].prompt = "Files: {{ files | join(', ') }}".into();
    for scope in [WorkdirScope::Agent, WorkdirScope::Episode] {
        let dir = tempfile::tempdir().unwrap();
        cfg.sandbox.workdir = scope;
        let eps = run(&engines, &cfg, &[task("a", "42")], 1, dir.path());
        let coder = actions_of(&eps[0], 1);
        assert_eq!(coder[0].files, ["out.txt"]);
        assert_eq!(coder[0].tool_output.as_deref(), Some("saved\n"));
        assert_eq!(eps[0].workdir, dir.path().join("ep-0"));
        let verifier_prompt = tok().decode(&actions_of(&eps[0], 2)[0].context, false).unwrap();
        match scope {
            WorkdirScope::Agent => {
                assert!(dir.path().join("ep-0/code_executor/out.txt").is_file());
                assert!(verifier_prompt.contains("Files:<|im_end|>"), "{verifier_prompt}");
            }
            WorkdirScope::Episode => {
                assert!(dir.path().join("ep-0/out.txt").is_file());
                assert!(verifier_prompt.contains("Files: out.txt<|im_end|>"), "{verifier_prompt}");
            }
        }
    }
}

#[test]
fn cpu_engine_rollouts_are_reproducible_from_the_seed() {
    let models: Vec<Box<dyn Model>> =
        [11, 12, 13].map(|s| Box::new(CpuBackend::new(&common::tiny_chat_model(s)).unwrap()) as Box<dyn Model>).into();
    let engines: Vec<&dyn Generator> = models.iter().map(|m| m as &dyn Generator).collect();
    let cfg = config();
    let (ta, tb) = (task("a", "42"), task("b", "42"));
    let tasks = [(0, &ta), (5, &tb)];
    let go = |seed: u64| {
        let dir = tempfile::tempdir().unwrap();
        let mut eps =
            run_episodes(&engines, &[tok(); 3], &cfg, &tasks, 2, Phase::Train, seed, dir.path(), &mut |_, _, _| Ok(()))
                .unwrap();
        eps.iter_mut().for_each(|e| e.workdir = Default::default());
        eps
    };
    let (first, again, other) = (go(3), go(3), go(4));
    assert_eq!(first, again);
    assert_ne!(first, other);
    assert_eq!(first.iter().map(|e| (e.task_index, e.sample)).collect::<Vec<_>>(), [(0, 0), (0, 1), (5, 0), (5, 1)]);
    assert_ne!(first[0].actions[0].tokens, first[1].actions[0].tokens, "samples of one task differ");
    for ep in &first {
        for a in &ep.actions {
            assert_eq!(a.tokens.len(), a.logprobs.len());
            assert!(a.tokens.len() <= 24);
            assert_eq!(a.finish == FinishReason::Stop, tok().stop_ids().contains(a.tokens.last().unwrap()));
            assert_eq!(a.text, tok().decode(&a.tokens, true).unwrap());
        }
    }
}

#[test]
fn observation_delta_comes_from_the_template() {
    let m = common::tiny_chat_model(0);
    let spec = TokenizerSpec {
        chat_template: Some(
            "{% for m in messages %}<|im_start|>[{{ m.role }}]: {{ m.content | trim }}<|im_end|>\n\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>[assistant]: {% endif %}"
                .into(),
        ),
        ..m.tokenizer.clone()
    };
    let custom = Tokenizer::new(&spec, &m.config).unwrap();
    let delta = observation_delta(&custom, "  42\n").unwrap();
    assert_eq!(delta.text, "\n\n<|im_start|>[user]: 42<|im_end|>\n\n<|im_start|>[assistant]: ");
    assert_eq!(delta.end_of_turn, custom.token_id("<|im_end|>").unwrap());
    // SmolLM2's own ChatML template.
    assert_eq!(
        observation_delta(tok(), "out").unwrap().text,
        "\n<|im_start|>user\nout<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn tool_output_takes_the_templates_tool_markup() {
    // A Qwen2.5-style template: tool messages become a user turn wrapped in <tool_response>.
    let m = common::tiny_chat_model(0);
    let spec = TokenizerSpec {
        chat_template: Some(
            "{% for m in messages %}{% if m.role == \"tool\" %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n\
             </tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}\
             {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                .into(),
        ),
        ..m.tokenizer.clone()
    };
    let qwen_like = Tokenizer::new(&spec, &m.config).unwrap();
    assert_eq!(observation_role(&qwen_like), "tool");
    assert_eq!(
        observation_delta(&qwen_like, "42\n").unwrap().text,
        "\n<|im_start|>user\n<tool_response>\n42\n\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    );
    // SmolLM2's template has no tool role: the output is a plain user turn.
    assert_eq!(observation_role(tok()), "user");
}

#[test]
fn python_code_extraction() {
    assert_eq!(extract_python_code("no code"), None);
    assert_eq!(extract_python_code("```python\n\n```"), None);
    assert_eq!(
        extract_python_code("```python\nx = 1\n```\ntext\n```py\nprint(x)\n```").as_deref(),
        Some("x = 1\n\nprint(x)")
    );
    assert_eq!(extract_python_code("```text\n```python\n```").as_deref(), None, "a non-python fence is skipped whole");
    assert_eq!(extract_python_code("```\nls\n```\n```Python3\nprint(1)\n```").as_deref(), Some("print(1)"));
    assert_eq!(extract_python_code("```python\nprint(1)\n```\n```python\nprint(2)"), Some("print(1)".into()));
}
