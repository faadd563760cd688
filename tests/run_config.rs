//! Run configuration (src/run_config): presets, MAPPA defaults, TOML round trip, unknown-key and
//! value validation with key paths, dotted-key overrides, and an inline DSBench-style pipeline.
use mappa::rl::{Aggregation, Estimator, KlEstimator};
use mappa::run_config::*;
use std::path::{Path, PathBuf};

/// A minimal valid config: one agent, rule coach, everything else defaulted.
const MINIMAL: &str = r#"
[run]
name = "tiny"
base_model = "models/tiny"

[[agents]]
name = "solver"
prompt = "Solve: {{ task }}"

[coach]
backend = "rule"

[data]
train = "train.jsonl"
eval = ["eval_a.jsonl"]
"#;

/// The full error chain as a user would see it.
fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn minimal() -> RunConfig {
    RunConfig::from_toml_str(MINIMAL, "minimal.toml").unwrap()
}

#[test]
fn presets_load_and_validate() {
    assert_eq!(RunConfig::preset_names(), ["mathchat", "dsbench"]);
    let m = RunConfig::preset("mathchat").unwrap();
    let names: Vec<&str> = m.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["solver", "code_executor", "verifier"]);
    assert_eq!(m.agents.iter().map(|a| a.max_actions).collect::<Vec<_>>(), [1, 2, 1]);
    assert_eq!(m.agents[1].tools, [Tool::Python]);
    assert!(m.agents[0].tools.is_empty() && m.agents[2].tools.is_empty());
    assert!(m.agents[2].prompt.contains(r"\boxed{answer}"));
    assert_eq!(m.agent_role(1), "Code Executor");
    assert_eq!(m.coach.backend, CoachBackend::Http);
    assert_eq!(m.coach.model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(m.coach.api_key_env.as_deref(), Some("GEMINI_API_KEY"));
    assert_eq!(m.rl, RlConfig::default());
    assert_eq!(m.sandbox.timeout_s, 30.0);
    assert_eq!(m.sandbox.workdir, WorkdirScope::Agent);
    assert_eq!((m.data.train_sample, m.data.holdout_fraction), (Some(512), 0.03));
    assert_eq!(m.run_dir(), Path::new("runs/mathchat"));
    m.validate().unwrap();

    let d = RunConfig::preset("dsbench").unwrap();
    let names: Vec<&str> = d.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["data_engineer", "modeler", "analyst"]);
    for a in &d.agents {
        assert_eq!((a.max_actions, a.tools.as_slice(), a.strip_think), (4, [Tool::Python].as_slice(), true));
    }
    assert!(d.agents[0].artifacts.contains(&"X_test.pkl".to_string()));
    assert_eq!(d.agents[1].artifacts, ["model.pkl"]);
    assert_eq!(d.agents[2].artifacts, ["submission.csv"]);
    assert_eq!(d.sandbox.workdir, WorkdirScope::Episode);
    assert_eq!(d.sandbox.timeout_s, 60.0);
    assert_eq!(d.coach.model.as_deref(), Some("gemini-2.5-pro"));
    assert_eq!(d.data.stage_files["train.csv"], "metadata.train_file");
    assert_eq!(d.data.task_field, "prompt");
    assert_eq!((d.rl.prompts_per_step, d.rl.max_new_tokens, d.rl.eval_every, d.rl.checkpoint_every), (16, 16384, 2, 4));
    d.validate().unwrap();

    assert!(err_text(RunConfig::preset("nope")).contains("unknown preset `nope`"));
}

#[test]
fn rl_defaults_are_mappa_mathchat_values() {
    let rl = minimal().rl;
    assert_eq!(rl, RlConfig::default());
    assert_eq!(rl.beta, 0.01);
    assert_eq!(rl.kl_estimator, Kl::K1);
    assert_eq!(rl.clip_eps_low, 0.2);
    assert_eq!(rl.clip_eps_high, 0.2);
    assert_eq!(rl.dual_clip, None);
    assert_eq!(rl.lr, 1e-6);
    assert_eq!(rl.lr_schedule, LrSchedule::Cosine);
    assert_eq!(rl.lr_min_ratio, 0.1);
    assert_eq!(rl.warmup_ratio, 0.03);
    assert_eq!((rl.adam_beta1, rl.adam_beta2), (0.9, 0.95));
    assert_eq!(rl.weight_decay, 0.0);
    assert_eq!(rl.grad_clip, 1.0);
    assert_eq!(rl.prompts_per_step, 32);
    assert_eq!(rl.samples_per_prompt, 2);
    assert_eq!(rl.samples_per_optimizer_step, 16);
    assert_eq!(rl.epochs_per_step, 1);
    assert_eq!(rl.max_new_tokens, 4096);
    assert_eq!(rl.temperature, 1.0);
    assert_eq!(rl.top_p, 1.0);
    assert_eq!(rl.eval_temperature, 0.6);
    assert_eq!(rl.eval_samples_per_prompt, 4);
    assert_eq!(rl.eval_every, 4);
    assert!(rl.eval_before_training);
    assert_eq!(rl.checkpoint_every, 32);
    assert_eq!(rl.loss_aggregation, LossAggregation::SeqMeanTokenMean);
    assert!(rl.mask_truncated);
    assert!(rl.advantage_std_norm);

    assert_eq!(rl.estimator, AdvantageEstimator::ReinforcePp);

    let adv = rl.advantage_config();
    assert_eq!((adv.beta, adv.kl, adv.normalize_std, adv.mask_truncated), (0.01, KlEstimator::K1, true, true));
    assert_eq!(adv.estimator, Estimator::ReinforcePp);
    let pg = rl.pg_loss_config();
    assert_eq!((pg.eps_low, pg.eps_high, pg.dual_clip, pg.kl_loss_coef), (0.2, 0.2, None, None));
    assert_eq!(pg.aggregation, Aggregation::SeqMeanTokenMean);
}

#[test]
fn other_defaults_and_accessors() {
    let c = minimal();
    assert_eq!((c.run.seed, c.run.steps, c.run.backend, c.run.device), (42, 128, BackendChoice::Auto, 0));
    assert_eq!(c.run_dir(), Path::new("runs/tiny"));
    let a = &c.agents[0];
    assert_eq!((a.max_actions, a.tools.len(), a.strip_think, a.device), (1, 0, false, None));
    assert_eq!(c.agent_role(0), "solver");
    assert_eq!(c.agent_base_model(0), Path::new("models/tiny"));
    assert_eq!(c.coach.concurrency, 16);
    assert_eq!(c.coach.tool_output_chars, 2000);
    assert_eq!(c.coach.temperature, 0.0);
    assert!(c.coach.ground_truth_to_final_agent);
    assert_eq!((c.data.id_field.as_str(), c.data.task_field.as_str()), ("id", "problem"));
    assert_eq!(c.data.answer_fields, ["answer"]);
    assert!(!c.data.last_number_fallback);
    let sb = c.sandbox.to_sandbox_config();
    assert_eq!((sb.timeout.as_secs(), sb.memory_bytes, sb.output_limit), (30, 2048 << 20, 8192));

    // Ground truth: only the final agent by default, per-agent overrides win, the global switch turns it off.
    let m = RunConfig::preset("mathchat").unwrap();
    assert_eq!((0..3).map(|i| m.coach_sees_ground_truth(i)).collect::<Vec<_>>(), [false, false, true]);
    let m2 = m
        .with_overrides(&["coach.ground_truth_to_final_agent=false", "agents[0].coach_sees_ground_truth=true"])
        .unwrap();
    assert_eq!((0..3).map(|i| m2.coach_sees_ground_truth(i)).collect::<Vec<_>>(), [true, false, false]);
    // The rule coach's process checks read the ground truth of every action (no model sees it).
    let process = m.with_overrides(&["coach.backend=rule", "coach.rule=process"]).unwrap();
    assert_eq!((0..3).map(|i| process.coach_sees_ground_truth(i)).collect::<Vec<_>>(), [true, true, true]);
    assert!(process.reward_label().starts_with("rule-based process coach"), "{}", process.reward_label());

    // Devices and sampling fall back to [run] / [rl].
    let m3 = m.with_overrides(&["run.device=1", "agents[2].device=3", "agents[1].sampling.temperature=0.7"]).unwrap();
    assert_eq!((m3.agent_device(0), m3.agent_device(2)), (1, 3));
    let s = m3.sampling(1);
    assert_eq!((s.temperature, s.eval_temperature, s.top_p, s.max_new_tokens), (0.7, 0.6, 1.0, 4096));
    assert_eq!(m3.sampling(0).temperature, 1.0);
}

#[test]
fn to_toml_string_round_trips() {
    let custom = minimal()
        .with_overrides(&[
            "run.dir=\"out/x\"",
            "rl.dual_clip=3.0",
            "agents[0].sampling.top_p=0.9",
            "data.train_sample=10",
            "coach.prompt_template=\"Score {{ agent_output }}\"",
        ])
        .unwrap();
    for c in [RunConfig::preset("mathchat").unwrap(), RunConfig::preset("dsbench").unwrap(), minimal(), custom] {
        let text = c.to_toml_string().unwrap();
        let back = RunConfig::from_toml_str(&text, "resolved.toml").unwrap();
        assert_eq!(back, c, "{text}");
        assert_eq!(back.to_toml_string().unwrap(), text);
    }
}

/// Parses `text` expecting an error that names each of `needles`.
fn assert_rejected(text: &str, needles: &[&str]) {
    let msg = err_text(RunConfig::from_toml_str(text, "bad.toml"));
    for n in needles {
        assert!(msg.contains(n), "`{n}` missing from:\n{msg}");
    }
}

#[test]
fn unknown_keys_are_rejected_with_key_file_and_line() {
    // Top level.
    assert_rejected(&format!("{MINIMAL}\n[extra]\nx = 1\n"), &["bad.toml", "line 17", "unknown field `extra`"]);
    // In [rl].
    assert_rejected(&format!("{MINIMAL}\n[rl]\nlrr = 2e-6\n"), &["bad.toml", "line 18", "unknown field `lrr`"]);
    // In an [[agents]] entry (the second one).
    let text = format!("{MINIMAL}\n[[agents]]\nname = \"b\"\nprompt = \"x\"\nmax_action = 2\n");
    assert_rejected(&text, &["bad.toml", "line 20", "unknown field `max_action`"]);
    // In [agents.sampling], [run], [coach], [data], [sandbox].
    let text = MINIMAL.replace("prompt = \"Solve: {{ task }}\"", "prompt = \"x\"\n[agents.sampling]\ntemp = 1.0");
    assert_rejected(&text, &["unknown field `temp`"]);
    assert_rejected(
        &MINIMAL.replace("seed", "seeed").replace("name = \"tiny\"", "name = \"t\"\nsed = 1"),
        &["unknown field `sed`"],
    );
    assert_rejected(
        &MINIMAL.replace("backend = \"rule\"", "backend = \"rule\"\nendpont = \"http://x\""),
        &["unknown field `endpont`"],
    );
    assert_rejected(&MINIMAL.replace("train = ", "trian = \"a\"\ntrain = "), &["unknown field `trian`"]);
    assert_rejected(&format!("{MINIMAL}\n[sandbox]\ntimeout = 3\n"), &["unknown field `timeout`"]);
    // Unknown enum values name the value and the line with the key.
    assert_rejected(&MINIMAL.replace("\"rule\"", "\"oracle\""), &["line 11", "backend", "unknown variant `oracle`"]);
    let text = MINIMAL.replace("prompt = \"Solve: {{ task }}\"", "prompt = \"x\"\ntools = [\"bash\"]");
    assert_rejected(&text, &["tools", "unknown variant `bash`"]);
    assert_rejected(&format!("{MINIMAL}\n[rl]\nkl_estimator = \"k4\"\n"), &["kl_estimator", "unknown variant `k4`"]);
    assert_rejected(&format!("{MINIMAL}\n[rl]\nestimator = \"ppo\"\n"), &["estimator", "unknown variant `ppo`"]);
    // Missing required keys are named too.
    assert_rejected(&MINIMAL.replace("train = \"train.jsonl\"", ""), &["missing field `train`"]);
}

#[test]
fn invalid_values_name_their_key_path() {
    type Edit = fn(&mut RunConfig);
    let cases: &[(Edit, &str)] = &[
        (|c| c.run.name = "a b".into(), "run.name must be non-empty and use only [A-Za-z0-9._-], got `a b`"),
        (|c| c.run.steps = 0, "run.steps must be >= 1, got 0"),
        (|c| c.agents.clear(), "agents: at least one [[agents]] entry is required"),
        (|c| c.agents[1].max_actions = 0, "agents[1].max_actions must be >= 1, got 0"),
        (|c| c.agents[2].max_actions = 3, "agents[2].max_actions is 3 but the agent has no tools"),
        (|c| c.agents[2].name = "solver".into(), "agents[2].name `solver` repeats agents[0].name"),
        (|c| c.agents[0].name = "problem-solver".into(), "agents[0].name must be an identifier"),
        (|c| c.agents[1].tools.push(Tool::Python), "agents[1].tools[1] repeats Python"),
        (|c| c.agents[0].artifacts = vec!["a.pkl".into()], "agents[0].artifacts needs a tool"),
        (|c| c.agents[1].artifacts = vec!["../a.pkl".into()], "agents[1].artifacts[0] must be a plain file name"),
        (|c| c.agents[1].artifacts = vec!["a".into(), "a".into()], "agents[1].artifacts[1] repeats `a`"),
        (|c| c.run.base_model = None, "agents[0].base_model is not set and run.base_model gives no default"),
        (|c| c.agents[0].role = Some(" ".into()), "agents[0].role must not be empty"),
        (|c| c.agents[0].prompt = "{{ task ".into(), "agents[0].prompt: template does not compile"),
        (|c| c.agents[0].prompt = "{{ taks }}".into(), "agents[0].prompt uses unknown variable `taks`"),
        (
            |c| c.agents[0].prompt = "{{ previous.verifier }}".into(),
            "agents[0].prompt reads `previous.verifier` but no earlier agent is named `verifier`",
        ),
        (
            |c| c.agents[1].prompt = "{{ tool_results.code_executor }}".into(),
            "agents[1].prompt reads `tool_results.code_executor`",
        ),
        (|c| c.agents[0].sampling.temperature = Some(0.0), "agents[0].sampling.temperature must be in (0, 2], got 0"),
        (
            |c| c.agents[0].sampling.eval_temperature = Some(-1.0),
            "agents[0].sampling.eval_temperature must be in [0, 2], got -1",
        ),
        (|c| c.agents[0].sampling.top_p = Some(1.5), "agents[0].sampling.top_p must be in (0, 1], got 1.5"),
        (|c| c.agents[0].sampling.max_new_tokens = Some(0), "agents[0].sampling.max_new_tokens must be >= 1, got 0"),
        (|c| c.coach.endpoint = None, "coach.endpoint is required when coach.backend = \"http\""),
        (|c| c.coach.model = None, "coach.model is required when coach.backend = \"http\""),
        (
            |c| c.coach.endpoint = Some("ftp://x".into()),
            "coach.endpoint must start with http:// or https://, got `ftp://x`",
        ),
        (
            |c| {
                c.coach.backend = CoachBackend::Local;
                c.coach.model = None;
            },
            "coach.model is required when coach.backend = \"local\"",
        ),
        (
            |c| {
                c.coach.backend = CoachBackend::Rule;
                c.coach.ground_truth_to_final_agent = false;
            },
            "coach.ground_truth_to_final_agent must be true",
        ),
        (
            |c| c.coach.api_key_env = Some("sk-abc123".into()),
            "coach.api_key_env must be the NAME of an environment variable",
        ),
        (|c| c.coach.prompt_template = Some("".into()), "coach.prompt_template must not be empty"),
        (|c| c.coach.temperature = 3.0, "coach.temperature must be in [0, 2], got 3"),
        (|c| c.coach.concurrency = 0, "coach.concurrency must be >= 1, got 0"),
        (|c| c.coach.timeout_s = 0.0, "coach.timeout_s must be in (0, 86400], got 0"),
        (|c| c.coach.tool_output_chars = 0, "coach.tool_output_chars must be >= 1, got 0"),
        (|c| c.data.train = PathBuf::new(), "data.train must not be empty"),
        (
            |c| c.data.train = "data/mappa_amc_eval_32.jsonl".into(),
            "data.train `data/mappa_amc_eval_32.jsonl` looks like an eval-only file (its name contains `eval`)",
        ),
        (|c| c.data.train = "x/AIME25.jsonl".into(), "its name contains `aime25`"),
        (|c| c.data.eval_only_markers = vec!["".into()], "data.eval_only_markers[0] must not be empty"),
        (
            |c| c.data.eval.push("./../shared/data/math/mappa_aime_1983_2024.jsonl".into()),
            "data.eval[2] is the training file data.train",
        ),
        (|c| c.data.eval.push(c.data.eval[0].clone()), "data.eval[2] repeats data.eval[0]"),
        (|c| c.data.id_field = "a..b".into(), "data.id_field must be a field name or dotted path"),
        (|c| c.data.task_field = "".into(), "data.task_field must be a field name or dotted path"),
        (|c| c.data.answer_fields.clear(), "data.answer_fields must name at least one field"),
        (|c| c.data.answer_fields.push(".x".into()), "data.answer_fields[1] must be a field name or dotted path"),
        (|c| c.data.holdout_fraction = 1.0, "data.holdout_fraction must be in [0, 1), got 1"),
        (|c| c.data.train_sample = Some(0), "data.train_sample must be >= 1, got 0"),
        (
            |c| {
                c.data.stage_files.insert("a/b.csv".into(), "f".into());
            },
            "data.stage_files.\"a/b.csv\" must be a plain file name",
        ),
        (|c| c.rl.beta = -0.1, "rl.beta must be in [0, inf), got -0.1"),
        (|c| c.rl.beta = f64::NAN, "rl.beta must be in [0, inf), got NaN"),
        (|c| c.rl.clip_eps_low = 1.5, "rl.clip_eps_low must be in (0, 1), got 1.5"),
        (|c| c.rl.clip_eps_high = 0.0, "rl.clip_eps_high must be in (0, 10], got 0"),
        (|c| c.rl.dual_clip = Some(1.0), "rl.dual_clip must be in (1, inf), got 1"),
        (|c| c.rl.lr = 0.0, "rl.lr must be in (0, 1), got 0"),
        (|c| c.rl.lr_min_ratio = 2.0, "rl.lr_min_ratio must be in [0, 1], got 2"),
        (|c| c.rl.warmup_ratio = 1.0, "rl.warmup_ratio must be in [0, 1), got 1"),
        (|c| c.rl.adam_beta1 = 1.0, "rl.adam_beta1 must be in [0, 1), got 1"),
        (|c| c.rl.adam_beta2 = -0.5, "rl.adam_beta2 must be in [0, 1), got -0.5"),
        (|c| c.rl.adam_eps = 0.0, "rl.adam_eps must be in (0, 1), got 0"),
        (|c| c.rl.weight_decay = -1.0, "rl.weight_decay must be in [0, inf), got -1"),
        (|c| c.rl.grad_clip = 0.0, "rl.grad_clip must be in (0, inf), got 0"),
        (|c| c.rl.prompts_per_step = 0, "rl.prompts_per_step must be >= 1, got 0"),
        (|c| c.rl.samples_per_prompt = 0, "rl.samples_per_prompt must be >= 1, got 0"),
        (|c| c.rl.samples_per_optimizer_step = 0, "rl.samples_per_optimizer_step must be >= 1, got 0"),
        (
            |c| (c.rl.estimator, c.rl.samples_per_prompt) = (AdvantageEstimator::Grpo, 1),
            "rl.estimator = \"grpo\" needs rl.samples_per_prompt >= 2 (a group of one sample has no baseline), got 1",
        ),
        (
            |c| (c.rl.estimator, c.rl.samples_per_prompt) = (AdvantageEstimator::Rloo, 1),
            "rl.estimator = \"rloo\" needs rl.samples_per_prompt >= 2 (a group of one sample has no baseline), got 1",
        ),
        (
            |c| c.rl.samples_per_optimizer_step = 24,
            "rl.samples_per_optimizer_step (24) must divide rl.prompts_per_step * rl.samples_per_prompt (64)",
        ),
        (|c| c.rl.epochs_per_step = 0, "rl.epochs_per_step must be >= 1, got 0"),
        (|c| c.rl.max_new_tokens = 0, "rl.max_new_tokens must be >= 1, got 0"),
        (|c| c.rl.max_prompt_tokens = 0, "rl.max_prompt_tokens must be >= 1, got 0"),
        (|c| c.rl.eval_samples_per_prompt = 0, "rl.eval_samples_per_prompt must be >= 1, got 0"),
        (|c| c.rl.temperature = 0.0, "rl.temperature must be in (0, 2], got 0"),
        (|c| c.rl.eval_temperature = 2.5, "rl.eval_temperature must be in [0, 2], got 2.5"),
        (|c| c.rl.top_p = 0.0, "rl.top_p must be in (0, 1], got 0"),
        (|c| c.sandbox.python = PathBuf::new(), "sandbox.python must not be empty"),
        (|c| c.sandbox.timeout_s = -1.0, "sandbox.timeout_s must be in (0, 86400], got -1"),
        (|c| c.sandbox.cpu_seconds = 0, "sandbox.cpu_seconds must be >= 1, got 0"),
        (|c| c.sandbox.memory_mb = 10, "sandbox.memory_mb must be >= 64, got 10"),
        (|c| c.sandbox.file_size_mb = 0, "sandbox.file_size_mb must be >= 1, got 0"),
        (|c| c.sandbox.max_processes = 0, "sandbox.max_processes must be >= 1, got 0"),
        (|c| c.sandbox.output_chars = 0, "sandbox.output_chars must be >= 1, got 0"),
        // Upper bounds: typos that would otherwise become allocations that abort.
        (|c| c.rl.samples_per_prompt = 1_000_000_000_000, "rl.samples_per_prompt must be <= 1024, got 1000000000000"),
        (
            |c| (c.rl.prompts_per_step, c.rl.samples_per_prompt) = (100_000, 16),
            "rl.prompts_per_step * rl.samples_per_prompt must be <= 1000000 (one step's episodes), got 1600000",
        ),
        (|c| c.rl.max_new_tokens = usize::MAX, "rl.max_new_tokens must be <= 1048576"),
        (|c| c.rl.eval_samples_per_prompt = 5000, "rl.eval_samples_per_prompt must be <= 1024, got 5000"),
        (|c| c.run.steps = u64::MAX, "run.steps must be <= 10000000"),
        (|c| c.agents[0].max_actions = 1000, "agents[0].max_actions must be <= 100, got 1000"),
        (
            |c| c.agents[0].sampling.max_new_tokens = Some(1 << 40),
            "agents[0].sampling.max_new_tokens must be <= 1048576",
        ),
        (|c| c.coach.concurrency = 1 << 20, "coach.concurrency must be <= 1024"),
        (|c| c.sandbox.memory_mb = u64::MAX, "sandbox.memory_mb must be <= 1048576"),
        (|c| c.sandbox.max_processes = 1 << 30, "sandbox.max_processes must be <= 10000"),
    ];
    let base = RunConfig::preset("mathchat").unwrap();
    for (edit, expected) in cases {
        let mut c = base.clone();
        edit(&mut c);
        let msg = err_text(c.validate());
        assert!(msg.contains(expected), "expected `{expected}` in:\n{msg}");
    }
    // Through the loader too: the TOML value is refused by validation, not by an allocation.
    assert_rejected(
        &(MINIMAL.to_string() + "\n[rl]\nsamples_per_prompt = 1000000000000\n"),
        &["rl.samples_per_prompt must be <= 1024"],
    );
    // All violations are reported together, and from_toml_str prefixes the source name.
    let text = MINIMAL.replace("name = \"tiny\"", "name = \"tiny\"\nsteps = 0") + "\n[rl]\nclip_eps_low = 1.5\n";
    assert_rejected(
        &text,
        &[
            "bad.toml: invalid run configuration",
            "run.steps must be >= 1, got 0",
            "rl.clip_eps_low must be in (0, 1), got 1.5",
        ],
    );
}

#[test]
fn overrides_apply_in_order() {
    let base = RunConfig::preset("mathchat").unwrap();
    let c = base
        .with_overrides(&[
            "rl.lr=2e-6",
            "run.steps=2",
            "run.name=exp1",
            "run.base_model = \"/models/q\"",
            "agents[1].max_actions=3",
            "agents[verifier].sampling.top_p=0.95",
            "agents[solver].tools=[\"python\"]",
            "data.eval=[\"a.jsonl\"]",
            "data.stage_files.\"in.csv\"=\"metadata.path\"",
            "rl={ beta = 0.02 }",
            "coach.backend=\"rule\"",
            "run.steps=3",
        ])
        .unwrap();
    assert_eq!((c.rl.lr, c.rl.beta, c.run.steps, c.run.name.as_str()), (2e-6, 0.02, 3, "exp1"));
    assert_eq!(c.agent_base_model(0), Path::new("/models/q"));
    assert_eq!(c.agents[1].max_actions, 3);
    assert_eq!(c.sampling(2).top_p, 0.95);
    assert_eq!(c.agents[0].tools, [Tool::Python]);
    assert_eq!(c.data.eval, [PathBuf::from("a.jsonl")]);
    assert_eq!(c.data.stage_files["in.csv"], "metadata.path");
    assert_eq!(c.coach.backend, CoachBackend::Rule);
    assert_eq!(c.run_dir(), Path::new("runs/exp1"));
    assert_eq!(base, RunConfig::preset("mathchat").unwrap(), "the original is untouched");
    assert_eq!(base.with_overrides::<&str>(&[]).unwrap(), base);
}

#[test]
fn bad_overrides_are_rejected() {
    let base = RunConfig::preset("mathchat").unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("rl.lrr=2e-6", &["override `rl.lrr=2e-6`", "unknown field `lrr`"]),
        ("nosuch.key=1", &["override `nosuch.key=1`", "unknown field `nosuch`"]),
        ("run.nme=\"x\"", &["unknown field `nme`"]),
        ("agents[0].max_action=2", &["override `agents[0].max_action=2`", "unknown field `max_action`"]),
        ("agents[0].sampling.temp=1", &["unknown field `temp`"]),
        ("agents[7].max_actions=2", &["no agent `7`"]),
        ("agents[critic].max_actions=2", &["no agent `critic`"]),
        ("agents[0]=1", &["expected `.KEY` after agents[0]"]),
        ("rl.lr", &["override `rl.lr`", "expected KEY=VALUE"]),
        ("rl.lr=fast", &["override `rl.lr=fast`", "invalid type: string \"fast\""]),
        ("coach.backend=\"oracle\"", &["unknown variant `oracle`"]),
        ("rl.clip_eps_low=1.5", &["rl.clip_eps_low must be in (0, 1), got 1.5"]),
        ("agents[1].max_actions=0", &["agents[1].max_actions must be >= 1, got 0"]),
        ("data.eval=[\"../shared/data/math/mappa_aime_1983_2024.jsonl\"]", &["data.eval[0] is the training file"]),
    ];
    for (o, needles) in cases {
        let msg = err_text(base.with_overrides(&[*o]));
        for n in *needles {
            assert!(msg.contains(n), "override `{o}`: `{n}` missing from:\n{msg}");
        }
    }
}

#[test]
fn dsbench_style_custom_pipeline_parses() {
    let text = r#"
[run]
name = "tabular-3"
dir = "runs/tabular"
steps = 8
device = 0

[[agents]]
name = "prep"
role = "Data Engineer"
prompt = """
Prepare the data for: {{ task }}
Files: {{ files | join(", ") }}
Save X_train.pkl, y_train.pkl and X_test.pkl."""
max_actions = 4
tools = ["python"]
base_model = "models/a"
strip_think = true
artifacts = ["X_train.pkl", "y_train.pkl", "X_test.pkl"]

[[agents]]
name = "fit"
prompt = "Train on the prepared data ({{ files | join(', ') }}). Notes: {{ previous.prep }}. Save model.pkl."
max_actions = 4
tools = ["python"]
base_model = "models/b"
device = 1
strip_think = true
artifacts = ["model.pkl"]

[agents.sampling]
temperature = 0.8
max_new_tokens = 8192

[[agents]]
name = "report"
prompt = """
{% if "model.pkl" not in files %}model.pkl is missing.{% endif %}
Predict with model.pkl on X_test.pkl, write submission.csv. Earlier: {{ previous.prep }} / {{ previous.fit }}
Last output of fit: {{ tool_results.fit }}"""
max_actions = 4
tools = ["python"]
base_model = "models/b"
artifacts = ["submission.csv"]

[coach]
backend = "local"
model = "models/coach"
concurrency = 4

[data]
train = "tasks/train.jsonl"
eval = ["tasks/holdout.jsonl"]
id_field = "metadata.task_id"
task_field = "prompt"
answer_fields = ["metadata.answer_dir"]
files_root = "/data/dsbench"

[data.stage_files]
"train.csv" = "metadata.train_file"
"test.csv" = "metadata.test_file"

[rl]
prompts_per_step = 4
samples_per_prompt = 2
samples_per_optimizer_step = 8

[sandbox]
timeout_s = 60
workdir = "episode"
"#;
    let c = RunConfig::from_toml_str(text, "tabular.toml").unwrap();
    assert_eq!(c.agents.len(), 3);
    assert_eq!(c.sandbox.workdir, WorkdirScope::Episode);
    assert_eq!((c.agent_device(0), c.agent_device(1)), (0, 1));
    assert_eq!(c.agent_base_model(2), Path::new("models/b"));
    assert_eq!(c.sampling(1).max_new_tokens, 8192);
    assert_eq!(c.sampling(2).max_new_tokens, 4096);
    assert_eq!(c.agent_role(0), "Data Engineer");
    assert_eq!(c.run_dir(), Path::new("runs/tabular"));
    assert_eq!(c.agent_index("fit"), Some(1));
    assert_eq!((0..3).map(|i| c.coach_sees_ground_truth(i)).collect::<Vec<_>>(), [false, false, true]);
    assert_eq!(RunConfig::from_toml_str(&c.to_toml_string().unwrap(), "again").unwrap(), c);
}

#[test]
fn load_from_file_and_check_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (train, eval, model) = (dir.path().join("t.jsonl"), dir.path().join("e.jsonl"), dir.path().join("m"));
    let cfg = MINIMAL
        .replace("\"train.jsonl\"", &format!("{:?}", train.display().to_string()))
        .replace("\"eval_a.jsonl\"", &format!("{:?}", eval.display().to_string()))
        .replace("\"models/tiny\"", &format!("{:?}", model.display().to_string()));
    let path = dir.path().join("run.toml");
    std::fs::write(&path, &cfg).unwrap();
    let c = RunConfig::load(&path).unwrap();
    let msg = err_text(c.check_paths());
    for key in ["data.train", "data.eval[0]", "run.base_model"] {
        assert!(msg.contains(key), "{key} missing from:\n{msg}");
    }
    for p in [&train, &eval, &model] {
        std::fs::write(p, "").unwrap();
    }
    c.check_paths().unwrap();

    // Train == eval through different spellings of the same existing file.
    let dup = cfg.replace(
        &format!("{:?}", eval.display().to_string()),
        &format!("{:?}", format!("{}/./t.jsonl", dir.path().display())),
    );
    std::fs::write(&path, dup).unwrap();
    let msg = err_text(RunConfig::load(&path));
    assert!(msg.contains(&path.display().to_string()) && msg.contains("data.eval[0] is the training file"), "{msg}");

    // Unknown keys in a file name the file, the line and the key.
    std::fs::write(&path, format!("{cfg}\n[rl]\nbetaa = 1\n")).unwrap();
    let msg = err_text(RunConfig::load(&path));
    assert!(msg.contains(&path.display().to_string()) && msg.contains("line 18") && msg.contains("`betaa`"), "{msg}");
    assert!(err_text(RunConfig::load(dir.path().join("missing.toml"))).contains("missing.toml"));
}

#[test]
fn preset_prompts_render() {
    for name in RunConfig::preset_names() {
        let c = RunConfig::preset(name).unwrap();
        let previous: std::collections::BTreeMap<&str, &str> =
            c.agents.iter().map(|a| (a.name.as_str(), "OUT")).collect();
        let tool_results: std::collections::BTreeMap<&str, &str> =
            c.agents.iter().map(|a| (a.name.as_str(), "")).collect();
        for (i, a) in c.agents.iter().enumerate() {
            let env = minijinja::Environment::new();
            let ctx = minijinja::context! {
                task => "TASK", record => minijinja::context! {}, previous, tool_results,
                files => vec!["test.csv", "train.csv"], agent => a.name.as_str(), role => c.agent_role(i),
            };
            let out = env.render_str(&a.prompt, ctx).unwrap();
            assert!(out.contains("TASK"), "{name}/{}: {out}", a.name);
            assert_eq!(out.contains("OUT"), i > 0, "{name}/{}: {out}", a.name);
            if a.name == "analyst" {
                assert!(out.contains("WARNING") && out.contains("test.csv, train.csv"), "{out}");
            }
            if a.name == "verifier" {
                assert!(out.contains("(no code was run)") && out.contains(r"**\boxed{answer}**"), "{out}");
            }
        }
    }
}

#[test]
fn estimator_names() {
    let base = RunConfig::preset("mathchat").unwrap();
    for (name, want, est) in [
        ("reinforce_pp", AdvantageEstimator::ReinforcePp, Estimator::ReinforcePp),
        ("grpo", AdvantageEstimator::Grpo, Estimator::Grpo),
        ("rloo", AdvantageEstimator::Rloo, Estimator::Rloo),
    ] {
        let c = base.with_overrides(&[&format!("rl.estimator={name}")]).unwrap();
        assert_eq!((c.rl.estimator, c.rl.advantage_config().estimator), (want, est), "{name}");
        assert!(c.to_toml_string().unwrap().contains(&format!("estimator = \"{name}\"")), "{name}");
    }
}
