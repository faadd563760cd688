//! `mappa train` end to end on the CPU with tiny agents (a random llama with SmolLM2's tokenizer): two steps
//! on four problems with the rule coach, resumed from a checkpoint, and with the HTTP coach talking to a
//! real `mappa serve` process.
mod common;
use common::served::Served;
use mappa::run::{Open, Run};
use mappa::run_config::RunConfig;
use mappa::tensor::DType;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The tiny chat model with room for MathChat's prompts and the coach's.
fn chat_model(seed: u64) -> mappa::loader::LoadedModel {
    let mut m = common::tiny_chat_model(seed);
    m.config.max_position_embeddings = 2048;
    m
}

/// A MathChat run of `steps` steps over four GSM8K-style problems in `dir`, agents from a tiny model.
fn config(dir: &Path, steps: u64) -> RunConfig {
    let model = dir.join("base");
    if !model.exists() {
        mappa::hf::write_dir(&chat_model(21), &model, DType::F32).unwrap();
        let problems = ["What is 6 times 7?", "What is 10 plus 5?", "What is 9 minus 4?", "What is 12 divided by 3?"];
        let answers = ["42", "15", "5", "4"];
        let lines: String = problems
            .iter()
            .zip(answers)
            .enumerate()
            .map(|(i, (p, a))| format!("{}\n", serde_json::json!({"id": format!("p{i}"), "problem": p, "answer": a})))
            .collect();
        std::fs::write(dir.join("train.jsonl"), lines).unwrap();
    }
    let mut cfg = RunConfig::preset("mathchat").unwrap();
    cfg.run.steps = steps;
    cfg.run.base_model = Some(model);
    cfg.run.dir = Some(dir.join("run"));
    cfg.coach.backend = mappa::run_config::CoachBackend::Rule;
    cfg.data.train = dir.join("train.jsonl");
    cfg.data.eval = vec![];
    cfg.data.holdout_fraction = 0.0;
    cfg.data.train_sample = None;
    let rl = &mut cfg.rl;
    (rl.prompts_per_step, rl.samples_per_prompt, rl.samples_per_optimizer_step) = (2, 2, 4);
    (rl.max_new_tokens, rl.lr, rl.eval_every, rl.checkpoint_every) = (12, 1e-3, 0, 1);
    rl.eval_before_training = false;
    rl.mask_truncated = false; // a random model never ends a turn: keep its actions in the loss
    cfg
}

/// `config` with an eval set: a copy of the four training problems (an eval file must not be the training file).
fn config_with_eval(dir: &Path, steps: u64) -> RunConfig {
    let mut cfg = config(dir, steps);
    let held = dir.join("held.jsonl");
    std::fs::copy(dir.join("train.jsonl"), &held).unwrap();
    cfg.data.eval = vec![held];
    cfg
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A metrics line without its timings, which differ between runs.
fn comparable(mut v: Value) -> Value {
    for k in ["time", "rollout_s", "coach_s", "train_s", "agent_train_s", "tokens_per_s"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

fn weights(dir: &Path) -> Vec<f32> {
    let m = mappa::loader::load(dir).unwrap();
    let mut names: Vec<&String> = m.weights.tensors.keys().collect();
    names.sort();
    names.iter().flat_map(|n| m.weights.tensors[*n].to_f32()).collect()
}

#[test]
fn two_steps_train_each_agent_and_resume_repeats_the_next_step() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 2);
    let dir = Run::open(Open::New(Box::new(cfg.clone()))).unwrap().train().unwrap();
    let m = metrics(&dir);
    assert_eq!(m.len(), 6, "2 steps x 3 agents");
    for line in &m {
        assert!(line["actions"].as_u64().unwrap() >= 4, "{line}");
        assert_eq!(line["unscored"], 0, "the rule coach scores everything: {line}");
        assert!(line["reward_mean"].is_number() && line["optimizer_steps"].as_u64().unwrap() >= 1, "{line}");
        assert!(line["grad_norm"].as_f64().unwrap() > 0.0, "the rewards reached the update: {line}");
    }
    // Every agent moved away from the base, and each has weights of its own.
    let base = weights(&tmp.path().join("base"));
    let ckpt = dir.join("checkpoints/step-000002");
    let agents: Vec<Vec<f32>> =
        ["solver", "code_executor", "verifier"].iter().map(|a| weights(&ckpt.join(a))).collect();
    for (i, w) in agents.iter().enumerate() {
        assert_eq!(w.len(), base.len());
        assert_ne!(w, &base, "agent {i} did not change");
    }
    assert!(agents[0] != agents[1] && agents[1] != agents[2] && agents[0] != agents[2], "agents share weights");
    assert!(dir.join("coach_log.jsonl").is_file() && dir.join("config.toml").is_file());

    // Drop the last checkpoint (as if the run died after step 1) and resume: step 2 comes out the same.
    std::fs::remove_dir_all(&ckpt).unwrap();
    let again = Run::open(Open::Resume(&dir)).unwrap().train().unwrap();
    let m2 = metrics(&again);
    assert_eq!(m2.len(), 6);
    for (a, b) in m.into_iter().zip(m2) {
        assert_eq!(comparable(a), comparable(b));
    }
    assert_eq!(weights(&ckpt.join("verifier")), agents[2], "the resumed step reproduces the weights");

    // Faults at checkpoints: a corrupt newest checkpoint (truncated weights), what a killed save leaves (a
    // temporary directory, a step directory without its state file). Resume sweeps the leftovers, falls back
    // to step 1, and step 2 comes out the same once more.
    let weights_file = ckpt.join("verifier/model.safetensors");
    let bytes = std::fs::read(&weights_file).unwrap();
    std::fs::write(&weights_file, &bytes[..100]).unwrap();
    let (partial, unmarked) = (dir.join("checkpoints/.partial-step-000003.999"), dir.join("checkpoints/step-000009"));
    for d in [&partial, &unmarked] {
        std::fs::create_dir_all(d.join("solver")).unwrap();
        std::fs::write(d.join("solver/model.safetensors"), vec![0u8; 1 << 20]).unwrap();
    }
    let mut run = Run::open(Open::Resume(&dir)).unwrap();
    assert_eq!(run.step, 1, "the corrupt step 2 is passed over");
    assert!(!partial.exists() && !unmarked.exists(), "interrupted checkpoints are removed at resume");
    assert_eq!(metrics(&dir).len(), 3, "metrics after the checkpoint's step are dropped");
    run.train().unwrap();
    drop(run);
    let m3 = metrics(&dir);
    assert_eq!(m3.len(), 6, "no step lost or repeated in metrics.jsonl");
    assert_eq!(weights(&ckpt.join("verifier")), agents[2], "step 2 again from step 1");
    // A state beyond run.steps (2) is not resumed from either.
    std::fs::write(ckpt.join("state.json"), r#"{"step": 99}"#).unwrap();
    assert_eq!(Run::open(Open::Resume(&dir)).unwrap().step, 1, "a checkpoint past run.steps is passed over");
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("step-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary checkpoint files left: {leftovers:?}");

    // The report reads the run.
    let index: PathBuf = mappa::report::write_report(&dir).unwrap();
    assert!(std::fs::read_to_string(index).unwrap().contains("code_executor"));
}

/// A run stopped during an evaluation (after the step's checkpoint, which comes first) resumes at that step
/// and finishes the evaluation without training the step again; the dropped partial problem lines come back
/// the same, and a finished run resumed evaluates nothing twice.
#[test]
fn a_run_stopped_during_its_evaluation_resumes_and_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config_with_eval(tmp.path(), 2);
    (cfg.rl.eval_every, cfg.rl.eval_samples_per_prompt) = (2, 2);
    let dir = Run::open(Open::New(Box::new(cfg))).unwrap().train().unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (summaries, problems) = (read("eval.jsonl"), read("eval_problems.jsonl"));
    assert_eq!((summaries.lines().count(), problems.lines().count()), (1, 4), "one evaluation of 4 problems");

    // Stopped after writing two problems' lines and no summary.
    std::fs::write(dir.join("eval.jsonl"), "").unwrap();
    let partial: String = problems.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("eval_problems.jsonl"), partial).unwrap();
    let mut run = Run::open(Open::Resume(&dir)).unwrap();
    assert_eq!(run.step, 2, "resumed at the checkpoint of the step being evaluated");
    run.train().unwrap();
    drop(run);
    assert_eq!(metrics(&dir).len(), 6, "no step trained again");
    assert_eq!(read("eval_problems.jsonl"), problems, "the same problem results, each once");
    let again: Vec<Value> = read("eval.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let before: Value = serde_json::from_str(summaries.lines().next().unwrap()).unwrap();
    assert_eq!(again, vec![before], "the same summary, once");

    // Finished: resuming evaluates nothing again.
    Run::open(Open::Resume(&dir)).unwrap().train().unwrap();
    assert_eq!((read("eval.jsonl").lines().count(), read("eval_problems.jsonl").lines().count()), (1, 4));
}

#[test]
fn http_coach_through_mappa_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let coach = tempfile::tempdir().unwrap();
    mappa::hf::write_dir(&chat_model(5), &coach.path().join("coach"), DType::F32).unwrap();
    let served = Served::spawn(coach.path().join("coach"), None, &["--max-tokens", "8"]);
    let mut cfg = config(tmp.path(), 1);
    cfg.coach.backend = mappa::run_config::CoachBackend::Http;
    cfg.coach.endpoint = Some(format!("http://127.0.0.1:{}/v1", served.port));
    cfg.coach.model = Some(served.name.clone());
    cfg.coach.api_key_env = None;
    let err = format!("{:#}", Run::open(Open::New(Box::new(cfg.clone()))).unwrap().train().unwrap_err());
    // The random coach model never writes a score line: every action gets its retry, then is left out of
    // training and counted, never given a default score; a run that trained nothing fails, naming why.
    assert!(err.contains("trained no agent") && err.contains("unscored by the coach"), "{err}");
    assert!(err.contains("no valid PROCESS_SCORE"), "the first reason is given: {err}");
    let dir = cfg.run_dir();
    let log: Vec<Value> = std::fs::read_to_string(dir.join("coach_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let m = metrics(&dir);
    let actions: u64 = m.iter().map(|l| l["actions"].as_u64().unwrap()).sum();
    assert_eq!(log.len() as u64, 2 * actions, "one exchange and one retry per action");
    for r in &log {
        assert_eq!(r["status"], "parse_error", "{}", r["error"]);
        assert!(r["reply"].is_string());
    }
    for line in &m {
        assert_eq!(line["unscored"], line["actions"], "{line}");
        assert_eq!(line["optimizer_steps"], 0, "{line}");
    }
}

#[test]
fn quickstart_config_resolves_to_installed_files() {
    let cfg = Run::quickstart().unwrap();
    cfg.check_paths().unwrap();
    assert_eq!(cfg.agents.len(), 3);
    let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!((lines(&cfg.data.train), lines(&cfg.data.eval[0])), (200, 24), "generated problems");
    assert!(cfg.reward_label().starts_with("rule-based process coach"), "a coach with signal: {}", cfg.reward_label());
    assert!(cfg.run.dir.as_ref().unwrap().starts_with("runs"));
}

/// `run.backend`: `auto` resolves here and is recorded in the run's config.toml; an explicit `cuda` that
/// cannot run, or an agent on a device the backend lacks, fails before the run directory exists.
#[test]
fn backend_choice_is_honoured_and_recorded() {
    use mappa::model::{auto_cpu_reason, cuda_unavailable, BackendChoice, Work};
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), 1);
    cfg.run.backend = BackendChoice::Auto;
    let run = Run::open(Open::New(Box::new(cfg.clone()))).unwrap();
    let written = RunConfig::load(run.dir.join("config.toml")).unwrap();
    let want = if auto_cpu_reason(Work::Training).is_some() { BackendChoice::Cpu } else { BackendChoice::Cuda };
    assert_eq!(written.run.backend, want, "config.toml records the resolved backend");
    drop(run);

    if let Some(why) = cuda_unavailable() {
        let mut cuda = cfg.clone();
        cuda.run.backend = BackendChoice::Cuda;
        cuda.run.dir = Some(tmp.path().join("cuda-run"));
        let err = Run::open(Open::New(Box::new(cuda))).err().expect("cuda without a usable CUDA backend").to_string();
        assert!(err.contains("CUDA backend") && err.contains(&why), "{err}");
        assert!(!tmp.path().join("cuda-run").exists(), "nothing is written before the backend is settled");
    }

    let mut placed = cfg;
    placed.run.backend = BackendChoice::Cpu;
    placed.agents[1].device = Some(1);
    placed.run.dir = Some(tmp.path().join("device-run"));
    let err = Run::open(Open::New(Box::new(placed))).err().expect("device 1 on the cpu backend").to_string();
    assert!(err.contains("device 1") && err.contains("cpu backend"), "{err}");
    assert!(!tmp.path().join("device-run").exists());
}

/// A start that fails (missing model, missing data) leaves no run directory behind, so the same command runs
/// once the cause is fixed; a run directory in use by one process is refused to a second.
#[test]
fn failed_starts_leave_nothing_and_a_run_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let good = config(tmp.path(), 1);
    let run_dir = good.run.dir.clone().unwrap();
    let broken: [(fn(&mut RunConfig, &Path), &str); 2] = [
        (|c, d| c.run.base_model = Some(d.join("no-such-model")), "no-such-model"),
        (|c, d| c.data.train = d.join("no-such-tasks.jsonl"), "no-such-tasks.jsonl"),
    ];
    for (edit, names) in broken {
        let mut bad = good.clone();
        edit(&mut bad, tmp.path());
        let err = format!("{:#}", Run::open(Open::New(Box::new(bad))).err().expect("a broken start"));
        assert!(err.contains(names), "{err}");
        assert!(!run_dir.exists(), "a failed start left {} behind ({err})", run_dir.display());
    }
    // The directory existing empty beforehand (made by the user) is emptied again, not removed.
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut bad = good.clone();
    bad.data.train = tmp.path().join("missing.jsonl");
    assert!(Run::open(Open::New(Box::new(bad))).is_err());
    assert!(run_dir.is_dir() && std::fs::read_dir(&run_dir).unwrap().all(|e| e.unwrap().file_name() == ".lock"));

    let run = Run::open(Open::New(Box::new(good.clone()))).expect("the fixed start runs");
    let err = format!("{:#}", Run::open(Open::Resume(&run_dir)).err().expect("a second process on the run"));
    assert!(err.contains("in use by another mappa process"), "{err}");
    let err = format!("{:#}", Run::open(Open::New(Box::new(good))).err().expect("a second new run in the same dir"));
    assert!(err.contains("already holds a run"), "{err}");
    assert!(run_dir.join("config.toml").is_file(), "the refused attempts did not touch the live run");
    drop(run);
}

/// Class 2 of the reliability issue: a coach that cannot be reached fails the start before anything is
/// written; actions that could not be generated are counted and said; a run that trains nothing fails after
/// `run.max_untrained_steps` consecutive steps, through the CLI too, with a non-zero exit.
#[test]
fn runs_that_train_nothing_fail_loudly() {
    let tmp = tempfile::tempdir().unwrap();
    let good = config(tmp.path(), 3);

    // Nothing listens on this port: the start fails at the probe, and no run directory is left.
    let mut unreachable = good.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // freed at once
    unreachable.coach.backend = mappa::run_config::CoachBackend::Http;
    unreachable.coach.endpoint = Some(format!("http://127.0.0.1:{port}/v1"));
    unreachable.coach.model = Some("coach".into());
    unreachable.coach.api_key_env = None;
    let err = format!("{:#}", Run::open(Open::New(Box::new(unreachable))).err().expect("an unreachable coach"));
    assert!(err.contains("coach") && err.contains("does not answer") && err.contains(&port.to_string()), "{err}");
    assert!(!good.run_dir().exists(), "a failed start wrote {}", good.run_dir().display());

    // Every prompt is longer than rl.max_prompt_tokens: no action is generated, each is counted, and the run
    // stops after two such steps.
    let mut starved = good.clone();
    starved.rl.max_prompt_tokens = 8;
    starved.run.max_untrained_steps = 2;
    let err = format!("{:#}", Run::open(Open::New(Box::new(starved.clone()))).unwrap().train().unwrap_err());
    assert!(err.contains("2 consecutive steps trained no agent"), "{err}");
    assert!(err.contains("not generated") && err.contains("exceeds rl.max_prompt_tokens (8)"), "{err}");
    let m = metrics(&starved.run_dir());
    assert_eq!(m.len(), 6, "2 steps x 3 agents: {m:?}");
    for line in &m {
        assert_eq!(line["skipped"], 4, "each of the 4 episodes' skipped actions is counted: {line}");
        assert_eq!(line["optimizer_steps"], 0, "{line}");
    }

    // The same through the CLI: a non-zero exit and the cause on stderr.
    let mut cli = starved;
    cli.run.dir = Some(tmp.path().join("cli-run"));
    let toml = tmp.path().join("starved.toml");
    std::fs::write(&toml, cli.to_toml_string().unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mappa"))
        .args(["train", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit 0 for a run that trained nothing: {stderr}");
    assert!(stderr.contains("step 1: ") && stderr.contains("actions not generated"), "said per step: {stderr}");
    assert!(stderr.contains("trained no agent"), "{stderr}");
}

/// A model per agent: the Code Executor starts from a qwen2 model with a Qwen-style chat template, the other
/// two from the llama with SmolLM2's ChatML. Its contexts are built with its own template, one step trains all
/// three (each against its own base as reference), and the checkpoint keeps each agent's architecture and
/// template, so the run resumes from it.
#[test]
fn each_agent_can_start_from_its_own_model_and_template() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), 2);
    let mut qwen = common::tiny_tools_model(23);
    qwen.config.arch = mappa::config::Arch::Qwen2;
    (qwen.config.attention_bias, qwen.config.tie_word_embeddings) = (true, false);
    qwen.config.max_position_embeddings = 2048;
    qwen.weights = common::random_weights(&qwen.config, 23);
    mappa::hf::write_dir(&qwen, &tmp.path().join("qwen"), DType::F32).unwrap();
    cfg.agents[1].base_model = Some(tmp.path().join("qwen"));
    cfg.run.steps = 1;
    let dir = Run::open(Open::New(Box::new(cfg.clone()))).unwrap().train().unwrap();
    let m = metrics(&dir);
    assert!(m.iter().all(|l| l["optimizer_steps"].as_u64().unwrap() > 0), "every agent trained: {m:?}");

    // What each agent saw, as the coach was shown it: the Qwen template writes a default system turn.
    let log = std::fs::read_to_string(dir.join("coach_log.jsonl")).unwrap();
    let system = "<|im_start|>system\nYou are a helpful assistant.";
    for line in log.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()) {
        let prompt = line["messages"].to_string();
        let qwen_agent = line["agent"] == "code_executor";
        assert_eq!(prompt.contains(&system.replace('\n', "\\n")), qwen_agent, "{}: {prompt}", line["agent"]);
    }
    let ckpt = dir.join("checkpoints/step-000001");
    let model_type = |agent: &str| mappa::loader::load(&ckpt.join(agent)).unwrap().config.arch.model_type();
    assert_eq!(
        [model_type("solver"), model_type("code_executor"), model_type("verifier")],
        ["llama", "qwen2", "llama"]
    );
    let template = mappa::loader::load(&ckpt.join("code_executor")).unwrap().tokenizer.chat_template.unwrap();
    assert!(template.contains("tool_response"));

    // Resuming loads each agent from its own checkpoint directory and goes on.
    let mut resumed = cfg.clone();
    resumed.run.steps = 2;
    std::fs::write(dir.join("config.toml"), resumed.to_toml_string().unwrap()).unwrap();
    Run::open(Open::Resume(&dir)).unwrap().train().unwrap();
    assert_eq!(metrics(&dir).len(), 6);
}

/// Start-up checks that need no server: a Python tool whose interpreter is missing fails the start before the
/// run directory exists; the memory estimate refuses a run larger than what is available, with its parts.
#[test]
fn start_up_checks_fail_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), 1);
    cfg.sandbox.python = tmp.path().join("no-such-python");
    let err = format!("{:#}", Run::open(Open::New(Box::new(cfg.clone()))).err().expect("a missing interpreter"));
    assert!(err.contains("sandbox") && err.contains("no-such-python"), "{err}");
    assert!(!cfg.run_dir().exists());
    // A configuration built in code is validated as a loaded one is: here its eval file is its training file.
    let mut same = config(tmp.path(), 1);
    same.data.eval = vec![same.data.train.clone()];
    let err = format!("{:#}", Run::open(Open::New(Box::new(same.clone()))).err().expect("eval = train"));
    assert!(err.contains("train and eval files must differ"), "{err}");
    assert!(!same.run_dir().exists());

    let model = mappa::loader::load(&tmp.path().join("base")).unwrap();
    let params: usize = model.weights.tensors.values().map(|t| t.numel()).sum();
    let need = mappa::run::MemoryEstimate::of(&[(&model.config, params)], &[0, 0, 0]);
    assert_eq!(need.training_state, 3 * params as u64 * 16, "3 agents x (weights, grads, 2 moments) in f32");
    assert_eq!(need.reference, params as u64 * 4, "one reference for the three agents' one base");
    let two_bases = mappa::run::MemoryEstimate::of(&[(&model.config, params), (&model.config, 10)], &[0, 1, 0]);
    assert_eq!(two_bases.training_state, (2 * params as u64 + 10) * 16);
    assert_eq!(two_bases.reference, (params as u64 + 10) * 4, "a reference per distinct base");
    need.check(need.total()).unwrap();
    let err = need.check(need.total() - 1).unwrap_err().to_string();
    assert!(err.contains("GiB is available") && err.contains("3 agents") && err.contains("frozen reference"), "{err}");
    assert!(mappa::run::available_memory().unwrap() > 0);
}

/// A resume sets aside (never deletes) metrics lines it cannot read, and says so; a run killed before its
/// first checkpoint resumes from step 0.
#[test]
fn resume_keeps_unreadable_lines_and_starts_over_without_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), 2);
    cfg.rl.checkpoint_every = 2;
    let dir = Run::open(Open::New(Box::new(cfg.clone()))).unwrap().train().unwrap();
    let want: Vec<Value> = metrics(&dir).into_iter().map(comparable).collect();

    // As if killed during step 2 before any checkpoint: no checkpoint, step 1's lines, a torn last line.
    std::fs::remove_dir_all(dir.join("checkpoints")).unwrap();
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let step1: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(dir.join("metrics.jsonl"), format!("{}\n{{\"step\": 2, \"agent\": \"sol", step1.join("\n")))
        .unwrap();
    let mut run = Run::open(Open::Resume(&dir)).unwrap();
    assert_eq!(run.step, 0, "no checkpoint: start again at step 0");
    assert_eq!(metrics(&dir).len(), 0, "every step is redone");
    let aside = std::fs::read_to_string(dir.join("metrics.jsonl.unreadable")).unwrap();
    assert_eq!(aside, "{\"step\": 2, \"agent\": \"sol\n", "the torn line is kept aside as it was");
    run.train().unwrap();
    let got: Vec<Value> = metrics(&dir).into_iter().map(comparable).collect();
    assert_eq!(got, want, "the run from step 0 again is the same run");
}

/// The kill test of the reliability issue: `mappa train` SIGKILLed at ten random moments (seeded), each time
/// resumed (or started again if it died before its config was written), then run to the end. The metrics
/// and evaluations equal those of an uninterrupted run, line for line, with no step lost or repeated, and
/// no temporary file is left.
#[test]
fn killed_at_random_points_a_run_resumes_to_the_same_result() {
    use rand::{Rng, SeedableRng};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let write_config = |name: &str| -> (PathBuf, PathBuf) {
        let mut cfg = config(tmp.path(), 6); // 6 steps, 3 agents: see `steps` and `agents` below
        cfg.run.dir = Some(tmp.path().join(name));
        let eval = tmp.path().join("eval.jsonl");
        std::fs::copy(tmp.path().join("train.jsonl"), &eval).unwrap();
        cfg.data.eval = vec![eval];
        (cfg.rl.eval_every, cfg.rl.eval_samples_per_prompt) = (2, 1);
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&path, cfg.to_toml_string().unwrap()).unwrap();
        (path, cfg.run_dir())
    };
    let train = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_mappa"))
            .arg("train")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let start_or_resume = |config: &Path, dir: &Path| match dir.join("config.toml").is_file() {
        true => train(&["--resume".as_ref(), dir.as_os_str()]),
        false => train(&["--config".as_ref(), config.as_os_str()]),
    };

    let (config_ref, dir_ref) = write_config("uninterrupted");
    let t0 = Instant::now();
    let out = train(&["--config".as_ref(), config_ref.as_os_str()]).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let whole = t0.elapsed();

    let (config, dir) = write_config("killed");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    // Kill points are spread by progress, not by time, so they fall all along the run on any machine: the
    // i-th waits until metrics.jsonl has reached a random number of lines (any step but the last), then a
    // random part of one step's time (start-up, rollout, coach, training, evaluation, checkpoint).
    let lines_now = || std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
    let (steps, agents) = (6, 3);
    let mut points: Vec<(usize, f64)> =
        (0..10).map(|_| (rng.random_range(0..agents * (steps - 1)), rng.random_range(0.0..0.9))).collect();
    points.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut seen = Vec::new();
    for (at_least, part) in points {
        let mut child = start_or_resume(&config, &dir);
        let deadline = Instant::now() + Duration::from_secs(300);
        while lines_now() < at_least && child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no progress to {at_least} metrics lines: {seen:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(whole.mul_f64(part / steps as f64));
        let finished = child.try_wait().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(finished.is_none(), "exited ({finished:?}) before the kill at {at_least} lines + {part:.2} step");
        seen.push((at_least, lines_now(), std::fs::read_dir(dir.join("checkpoints")).map_or(0, |d| d.count())));
    }
    let finish = start_or_resume(&config, &dir).wait_timeout_or_kill(Duration::from_secs(600));
    // (lines waited for, lines and checkpoint directories after the kill)
    assert!(finish.success(), "the last resume failed; kills: {seen:?}");
    eprintln!("uninterrupted: {whole:?}; kills: {seen:?}");

    let lines = |dir: &Path, file: &str| -> Vec<Value> {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        text.lines().map(|l| comparable(serde_json::from_str(l).unwrap())).collect()
    };
    for file in ["metrics.jsonl", "eval.jsonl", "eval_problems.jsonl"] {
        assert_eq!(lines(&dir, file), lines(&dir_ref, file), "{file} differs from the uninterrupted run's");
    }
    let mut left = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains("partial") || name.ends_with(".unreadable") || name.ends_with(".tmp") {
                left.push(e.path());
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Waiting for a child with a deadline, so a hung resume fails the test instead of hanging it.
trait WaitTimeout {
    fn wait_timeout_or_kill(self, limit: std::time::Duration) -> std::process::ExitStatus;
}

impl WaitTimeout for std::process::Child {
    fn wait_timeout_or_kill(mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > limit {
                self.kill().unwrap();
                panic!("still running after {limit:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The outcome-only baseline (`rl.reward = "outcome"`): every action of an episode gets 10 x its final
/// answer's correctness, an ungradable episode's actions are unscored with the reason, and a run with it calls
/// no coach and says so in its report.
#[test]
fn outcome_reward_scores_every_action_by_the_final_answer() {
    use mappa::engine::FinishReason;
    use mappa::rollout::{ActionRecord, Episode};
    let action = |agent: usize| ActionRecord {
        agent,
        turn: 0,
        context: vec![1],
        tokens: vec![2],
        logprobs: vec![-0.5],
        finish: FinishReason::Stop,
        text: String::new(),
        code: None,
        tool_output: None,
        files: Vec::new(),
        submission: None,
    };
    let episode = |correct: Option<bool>, actions: usize| Episode {
        task_index: 0,
        sample: 0,
        actions: (0..actions).map(action).collect(),
        outputs: Vec::new(),
        skipped: Vec::new(),
        workdir: PathBuf::new(),
        final_answer_correct: correct,
        submission: None,
    };
    let (scores, reasons) =
        mappa::run::outcome_scores(&[episode(Some(true), 3), episode(Some(false), 4), episode(None, 2)]);
    assert_eq!(scores, vec![vec![Some(10.0); 3], vec![Some(0.0); 4], vec![None; 2]]);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("cannot be graded"), "{reasons:?}");

    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), 1);
    cfg.rl.reward = mappa::run_config::Reward::Outcome;
    // An unreachable HTTP coach: the outcome baseline must not even probe it.
    cfg.coach.backend = mappa::run_config::CoachBackend::Http;
    cfg.coach.endpoint = Some("http://127.0.0.1:9/v1".into());
    cfg.coach.model = Some("nobody".into());
    cfg.coach.api_key_env = None;
    let dir = Run::open(Open::New(Box::new(cfg))).unwrap().train().unwrap();
    assert!(!dir.join("coach_log.jsonl").exists(), "no coach was called");
    for line in metrics(&dir) {
        let want = 10.0 * line["train_accuracy"].as_f64().unwrap();
        if line["agent"] == "solver" {
            assert_eq!(line["reward_mean"].as_f64().unwrap(), want, "one action per episode: {line}");
        }
        assert_eq!(line["unscored"], 0, "{line}");
    }
    let index = mappa::report::write_report(&dir).unwrap();
    assert!(std::fs::read_to_string(index).unwrap().contains("outcome only"), "the report names the rewards");
}

/// `mappa eval --config`: the base team of a configuration, untrained, evaluated in a new run directory,
/// with one line per problem in eval_problems.jsonl (what the learning experiment compares arms by).
#[test]
fn eval_config_evaluates_the_base_team_problem_by_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config_with_eval(tmp.path(), 1);
    (cfg.rl.eval_samples_per_prompt, cfg.rl.max_new_tokens) = (2, 4);
    let toml = tmp.path().join("base.toml");
    std::fs::write(&toml, cfg.to_toml_string().unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mappa"))
        .args(["eval", "--config"])
        .arg(&toml)
        .args(["--set", "run.name=base"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = cfg.run_dir();
    assert!(!dir.join("metrics.jsonl").exists() && !dir.join("checkpoints").exists(), "nothing was trained");
    let problems: Vec<Value> = std::fs::read_to_string(dir.join("eval_problems.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = problems.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["p0", "p1", "p2", "p3"], "one line per problem, in task order");
    for p in &problems {
        assert_eq!((p["dataset"].as_str(), p["step"].as_u64()), (Some("held"), Some(0)), "{p}");
        assert_eq!(p["correct"].as_array().unwrap().len(), 2, "one entry per sample: {p}");
    }
    let summary: Value = serde_json::from_str(std::fs::read_to_string(dir.join("eval.jsonl")).unwrap().trim()).unwrap();
    let correct: usize =
        problems.iter().flat_map(|p| p["correct"].as_array().unwrap()).filter(|c| c.as_bool().unwrap()).count();
    assert_eq!(summary["avg_at_k"].as_f64().unwrap(), correct as f64 / 8.0, "the lines add up to the summary");
}

/// `rl.estimator = "grpo"` and `"rloo"` run end to end: the run hands each sample's group (task, turn) to
/// the trainer (the formulas are tested in tests/rl.rs and tests/trainer.rs).
#[test]
fn grpo_and_rloo_runs_train_with_groups() {
    for estimator in ["grpo", "rloo"] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), 1).with_overrides(&[format!("rl.estimator={estimator}")]).unwrap();
        let dir = Run::open(Open::New(Box::new(cfg))).unwrap().train().unwrap();
        for line in metrics(&dir) {
            assert!(line["optimizer_steps"].as_u64().unwrap() >= 1, "{estimator}: {line}");
            assert!(line["loss"].as_f64().unwrap().is_finite(), "{estimator}: {line}");
        }
    }
}
