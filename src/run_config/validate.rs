//! `RunConfig::validate`: value rules, each error naming its key path. All violations are reported at once.
//!
//! Rules (every count also has an upper bound, named in its message, far past any real run: a typo such as
//! 1e12 samples is refused here instead of aborting the process with an allocation failure):
//! - `run.name`: non-empty, only `[A-Za-z0-9._-]` (it names a directory); `run.steps >= 1`;
//!   `run.max_untrained_steps >= 1`.
//! - `agents`: at least one; `name` an identifier (`[A-Za-z_][A-Za-z0-9_]*`), unique; `prompt` compiles as
//!   minijinja and uses only [`PROMPT_VARIABLES`] (plus minijinja's globals), and `previous.X` /
//!   `tool_results.X` only for an earlier agent X; `max_actions >= 1`, and `> 1` only with a tool (only a
//!   tool observation starts another action); tools not repeated; `artifacts` plain file names, unique, and
//!   only for agents with a tool; a base model from the agent or `run.base_model`; sampling overrides obey
//!   `[rl]`'s ranges.
//! - `coach`: `http` needs `model` and an `http(s)://` `endpoint`; `local` needs `model`; `rule` needs
//!   `ground_truth_to_final_agent` (it only grades final answers); `api_key_env` is a variable name
//!   (`[A-Za-z_][A-Za-z0-9_]*`, so a pasted key is refused); `concurrency`, `tool_output_chars >= 1`;
//!   `timeout_s` in (0, 86400]; `temperature` in [0, 2]; a prompt override non-empty.
//! - `data`: `train` non-empty, its file name free of every `eval_only_markers` entry; `eval[i]` neither
//!   the train file nor a repeat (paths compared after canonicalisation when they exist, else lexically);
//!   field paths non-empty dotted names; `answer_fields` non-empty; `holdout_fraction` in [0, 1);
//!   `train_sample >= 1`; `stage_files` keys plain file names.
//! - `rl`: `beta >= 0`; `clip_eps_low` in (0, 1); `clip_eps_high` in (0, 10]; `dual_clip > 1`; `lr` in
//!   (0, 1); `lr_min_ratio` in [0, 1]; `warmup_ratio` in [0, 1); Adam betas in [0, 1); `adam_eps` in
//!   (0, 1); `weight_decay >= 0`; `grad_clip > 0`; counts >= 1; `temperature` in (0, 2]; `eval_temperature`
//!   in [0, 2]; `top_p` in (0, 1]; `samples_per_optimizer_step` divides `prompts_per_step *
//!   samples_per_prompt` (the episodes of one rollout step), so every single-action agent gets a whole
//!   number of optimizer steps per rollout step (MAPPA: 64 / 16 = 4); `estimator` `grpo` or `rloo` needs
//!   `samples_per_prompt >= 2` (a group of one sample has no baseline).
//! - `sandbox`: `requires` Python module names; `timeout_s` in (0, 86400]; `cpu_seconds`, `file_size_mb`, `max_processes`, `output_chars >= 1`;
//!   `memory_mb >= 64`; `python` non-empty.
use super::{AdvantageEstimator, CoachBackend, RunConfig, SamplingOverrides, PROMPT_VARIABLES};
use anyhow::{bail, Result};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

/// Upper bounds of counts: tokens of one prompt or completion, samples of one prompt, episodes of one step.
const TOKENS: u64 = 1 << 20;
const SAMPLES: u64 = 1024;
const EPISODES: u64 = 1_000_000;

/// minijinja's default globals, allowed in prompt templates.
const TEMPLATE_GLOBALS: &[&str] = &["range", "dict", "namespace", "debug"];

#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    /// `v` lies in `interval`, written as `(0, 1]`; `inf` is an open upper end. NaN always fails.
    fn within(&mut self, key: &str, v: f64, interval: &str) {
        let (lo_open, hi_open) = (interval.starts_with('('), interval.ends_with(')'));
        let (lo, hi) = interval[1..interval.len() - 1].split_once(", ").expect("interval literal");
        let (lo, hi): (f64, f64) = (lo.parse().expect("bound"), hi.parse().expect("bound"));
        let ok = (if lo_open { v > lo } else { v >= lo }) && (if hi_open { v < hi } else { v <= hi });
        self.check(ok, || format!("{key} must be in {interval}, got {v}"));
    }

    /// A count in `[min, max]`: the upper bounds are far past any real run and stop a typo (1e12 samples)
    /// before it becomes an allocation that aborts the process.
    fn count(&mut self, key: &str, v: u64, min: u64, max: u64) {
        self.check(v >= min, || format!("{key} must be >= {min}, got {v}"));
        self.check(v <= max, || format!("{key} must be <= {max}, got {v}"));
    }

    fn nonempty(&mut self, key: &str, v: &str) {
        self.check(!v.trim().is_empty(), || format!("{key} must not be empty"));
    }

    fn field_path(&mut self, key: &str, v: &str) {
        self.check(!v.is_empty() && v.split('.').all(|s| !s.is_empty()), || {
            format!("{key} must be a field name or dotted path (a.b), got `{v}`")
        });
    }

    fn file_name(&mut self, key: &str, v: &str) {
        let plain = !v.is_empty() && v != "." && v != ".." && !v.contains(['/', '\\', '\0']);
        self.check(plain, || format!("{key} must be a plain file name, got `{v}`"));
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Canonical path when it exists, else the lexical form without `.` components.
fn same_file_key(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.components().filter(|c| *c != Component::CurDir).collect())
}

/// Compiles an agent prompt and checks the variables it reads.
fn check_prompt(e: &mut Errors, key: &str, text: &str, earlier: &[&str]) {
    let mut env = minijinja::Environment::new();
    if let Err(err) = env.add_template("prompt", text) {
        e.0.push(format!("{key}: template does not compile: {err}"));
        return;
    }
    let tmpl = env.get_template("prompt").expect("template just added");
    let mut vars: Vec<String> = tmpl.undeclared_variables(true).into_iter().collect();
    vars.sort();
    for var in vars {
        let (root, attr) = match var.split_once('.') {
            Some((r, a)) => (r, Some(a.split('.').next().unwrap_or(a))),
            None => (var.as_str(), None),
        };
        if !PROMPT_VARIABLES.contains(&root) && !TEMPLATE_GLOBALS.contains(&root) {
            e.0.push(format!("{key} uses unknown variable `{root}` (known: {})", PROMPT_VARIABLES.join(", ")));
        } else if let (true, Some(a)) = (root == "previous" || root == "tool_results", attr) {
            e.check(earlier.contains(&a), || format!("{key} reads `{root}.{a}` but no earlier agent is named `{a}`"));
        }
    }
}

fn check_sampling(e: &mut Errors, key: &str, s: &SamplingOverrides) {
    if let Some(t) = s.temperature {
        e.within(&format!("{key}.temperature"), t, "(0, 2]");
    }
    if let Some(t) = s.eval_temperature {
        e.within(&format!("{key}.eval_temperature"), t, "[0, 2]");
    }
    if let Some(p) = s.top_p {
        e.within(&format!("{key}.top_p"), p, "(0, 1]");
    }
    if let Some(n) = s.max_new_tokens {
        e.count(&format!("{key}.max_new_tokens"), n as u64, 1, TOKENS);
    }
}

impl RunConfig {
    /// Checks every rule in this module's docs; the error lists all violations, one per line.
    pub fn validate(&self) -> Result<()> {
        let mut e = Errors::default();
        self.check_run(&mut e);
        self.check_agents(&mut e);
        self.check_coach(&mut e);
        self.check_data(&mut e);
        self.check_rl(&mut e);
        self.check_sandbox(&mut e);
        if e.0.is_empty() {
            Ok(())
        } else {
            bail!("{}", e.0.join("\n"))
        }
    }

    fn check_run(&self, e: &mut Errors) {
        let name = &self.run.name;
        e.check(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), || {
            format!("run.name must be non-empty and use only [A-Za-z0-9._-], got `{name}`")
        });
        e.count("run.steps", self.run.steps, 1, 10_000_000);
        e.count("run.max_untrained_steps", self.run.max_untrained_steps, 1, 10_000_000);
    }

    fn check_agents(&self, e: &mut Errors) {
        e.check(!self.agents.is_empty(), || "agents: at least one [[agents]] entry is required".into());
        let mut names: Vec<&str> = Vec::new();
        for (i, a) in self.agents.iter().enumerate() {
            let key = format!("agents[{i}]");
            e.check(is_identifier(&a.name), || {
                format!("{key}.name must be an identifier ([A-Za-z_][A-Za-z0-9_]*), got `{}`", a.name)
            });
            if let Some(j) = names.iter().position(|n| *n == a.name) {
                e.0.push(format!("{key}.name `{}` repeats agents[{j}].name", a.name));
            }
            if let Some(r) = &a.role {
                e.nonempty(&format!("{key}.role"), r);
            }
            e.nonempty(&format!("{key}.prompt"), &a.prompt);
            check_prompt(e, &format!("{key}.prompt"), &a.prompt, &names);
            e.count(&format!("{key}.max_actions"), a.max_actions.into(), 1, 100);
            e.check(a.max_actions <= 1 || !a.tools.is_empty(), || {
                format!(
                    "{key}.max_actions is {} but the agent has no tools: only a tool result starts another action",
                    a.max_actions
                )
            });
            let mut tools = HashSet::new();
            for (t, tool) in a.tools.iter().enumerate() {
                e.check(tools.insert(tool), || format!("{key}.tools[{t}] repeats {tool:?}"));
            }
            e.check(a.artifacts.is_empty() || !a.tools.is_empty(), || {
                format!("{key}.artifacts needs a tool that writes files (e.g. tools = [\"python\"])")
            });
            for (f, name) in a.artifacts.iter().enumerate() {
                e.file_name(&format!("{key}.artifacts[{f}]"), name);
                e.check(!a.artifacts[..f].contains(name), || format!("{key}.artifacts[{f}] repeats `{name}`"));
            }
            e.check(a.base_model.is_some() || self.run.base_model.is_some(), || {
                format!("{key}.base_model is not set and run.base_model gives no default")
            });
            if let Some(p) = &a.base_model {
                e.check(!p.as_os_str().is_empty(), || format!("{key}.base_model must not be empty"));
            }
            check_sampling(e, &format!("{key}.sampling"), &a.sampling);
            names.push(&a.name);
        }
    }

    fn check_coach(&self, e: &mut Errors) {
        let c = &self.coach;
        match c.backend {
            CoachBackend::Http => {
                e.check(c.model.is_some(), || "coach.model is required when coach.backend = \"http\"".into());
                match &c.endpoint {
                    None => e.0.push("coach.endpoint is required when coach.backend = \"http\"".into()),
                    Some(u) => e.check(u.starts_with("http://") || u.starts_with("https://"), || {
                        format!("coach.endpoint must start with http:// or https://, got `{u}`")
                    }),
                }
            }
            CoachBackend::Local => {
                e.check(c.model.is_some(), || "coach.model is required when coach.backend = \"local\"".into())
            }
            CoachBackend::Rule => e.check(c.ground_truth_to_final_agent, || {
                "coach.backend = \"rule\" grades final answers, so coach.ground_truth_to_final_agent must be true"
                    .into()
            }),
        }
        if let Some(m) = &c.model {
            e.nonempty("coach.model", m);
        }
        if let Some(v) = &c.api_key_env {
            e.check(is_identifier(v), || {
                "coach.api_key_env must be the NAME of an environment variable (e.g. GEMINI_API_KEY), not the key"
                    .into()
            });
        }
        if let Some(t) = &c.prompt_template {
            e.nonempty("coach.prompt_template", t);
        }
        e.within("coach.temperature", c.temperature, "[0, 2]");
        e.count("coach.concurrency", c.concurrency as u64, 1, 1024);
        e.within("coach.timeout_s", c.timeout_s, "(0, 86400]");
        e.count("coach.tool_output_chars", c.tool_output_chars as u64, 1, 10_000_000);
    }

    fn check_data(&self, e: &mut Errors) {
        let d = &self.data;
        e.check(!d.train.as_os_str().is_empty(), || "data.train must not be empty".into());
        let file = d.train.file_name().map(|f| f.to_string_lossy().to_lowercase()).unwrap_or_default();
        if let Some(m) = d.eval_only_markers.iter().find(|m| file.contains(&m.to_lowercase())) {
            e.0.push(format!(
                "data.train `{}` looks like an eval-only file (its name contains `{m}`); train on a training file, or edit data.eval_only_markers",
                d.train.display()
            ));
        }
        for (i, m) in d.eval_only_markers.iter().enumerate() {
            e.nonempty(&format!("data.eval_only_markers[{i}]"), m);
        }
        let train = same_file_key(&d.train);
        let evals: Vec<PathBuf> = d.eval.iter().map(|p| same_file_key(p)).collect();
        for (i, p) in evals.iter().enumerate() {
            e.check(*p != train, || {
                format!("data.eval[{i}] is the training file data.train: train and eval files must differ")
            });
            if let Some(j) = evals[..i].iter().position(|q| q == p) {
                e.0.push(format!("data.eval[{i}] repeats data.eval[{j}]"));
            }
        }
        e.field_path("data.id_field", &d.id_field);
        e.field_path("data.task_field", &d.task_field);
        e.check(!d.answer_fields.is_empty(), || "data.answer_fields must name at least one field".into());
        for (i, f) in d.answer_fields.iter().enumerate() {
            e.field_path(&format!("data.answer_fields[{i}]"), f);
        }
        e.within("data.holdout_fraction", d.holdout_fraction, "[0, 1)");
        if let Some(n) = d.train_sample {
            e.count("data.train_sample", n as u64, 1, 100_000_000);
        }
        for (name, field) in &d.stage_files {
            e.file_name(&format!("data.stage_files.\"{name}\""), name);
            e.field_path(&format!("data.stage_files.\"{name}\""), field);
        }
    }

    fn check_rl(&self, e: &mut Errors) {
        let r = &self.rl;
        e.within("rl.beta", r.beta, "[0, inf)");
        e.within("rl.clip_eps_low", r.clip_eps_low, "(0, 1)");
        e.within("rl.clip_eps_high", r.clip_eps_high, "(0, 10]");
        if let Some(c) = r.dual_clip {
            e.within("rl.dual_clip", c, "(1, inf)");
        }
        e.within("rl.lr", r.lr, "(0, 1)");
        e.within("rl.lr_min_ratio", r.lr_min_ratio, "[0, 1]");
        e.within("rl.warmup_ratio", r.warmup_ratio, "[0, 1)");
        e.within("rl.adam_beta1", r.adam_beta1, "[0, 1)");
        e.within("rl.adam_beta2", r.adam_beta2, "[0, 1)");
        e.within("rl.adam_eps", r.adam_eps, "(0, 1)");
        e.within("rl.weight_decay", r.weight_decay, "[0, inf)");
        e.within("rl.grad_clip", r.grad_clip, "(0, inf)");
        e.count("rl.prompts_per_step", r.prompts_per_step as u64, 1, 100_000);
        e.count("rl.samples_per_prompt", r.samples_per_prompt as u64, 1, SAMPLES);
        e.count("rl.samples_per_optimizer_step", r.samples_per_optimizer_step as u64, 1, EPISODES);
        let episodes_of_step = (r.prompts_per_step as u64).saturating_mul(r.samples_per_prompt as u64);
        e.check(episodes_of_step <= EPISODES, || {
            format!("rl.prompts_per_step * rl.samples_per_prompt must be <= {EPISODES} (one step's episodes), got {episodes_of_step}")
        });
        if let est @ (AdvantageEstimator::Grpo | AdvantageEstimator::Rloo) = r.estimator {
            let name = if est == AdvantageEstimator::Grpo { "grpo" } else { "rloo" };
            e.check(r.samples_per_prompt >= 2, || {
                format!(
                    "rl.estimator = \"{name}\" needs rl.samples_per_prompt >= 2 (a group of one sample has no baseline), got {}",
                    r.samples_per_prompt
                )
            });
        }
        e.count("rl.epochs_per_step", r.epochs_per_step as u64, 1, 100);
        e.count("rl.max_new_tokens", r.max_new_tokens as u64, 1, TOKENS);
        e.count("rl.max_prompt_tokens", r.max_prompt_tokens as u64, 1, TOKENS);
        e.count("rl.eval_samples_per_prompt", r.eval_samples_per_prompt as u64, 1, SAMPLES);
        e.within("rl.temperature", r.temperature, "(0, 2]");
        e.within("rl.eval_temperature", r.eval_temperature, "[0, 2]");
        e.within("rl.top_p", r.top_p, "(0, 1]");
        let episodes = r.prompts_per_step * r.samples_per_prompt;
        let per_opt = r.samples_per_optimizer_step;
        e.check(per_opt == 0 || episodes == 0 || episodes % per_opt == 0, || {
            format!(
                "rl.samples_per_optimizer_step ({per_opt}) must divide rl.prompts_per_step * rl.samples_per_prompt ({episodes})"
            )
        });
    }

    fn check_sandbox(&self, e: &mut Errors) {
        let s = &self.sandbox;
        e.check(!s.python.as_os_str().is_empty(), || "sandbox.python must not be empty".into());
        for (i, m) in s.requires.iter().enumerate() {
            let module = !m.is_empty()
                && m.split('.').all(|p| {
                    p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            e.check(module, || format!("sandbox.requires[{i}] = {m:?} is not a Python module name"));
        }
        e.within("sandbox.timeout_s", s.timeout_s, "(0, 86400]");
        e.count("sandbox.cpu_seconds", s.cpu_seconds, 1, 86_400);
        e.count("sandbox.memory_mb", s.memory_mb, 64, 1 << 20);
        e.count("sandbox.file_size_mb", s.file_size_mb, 1, 1 << 20);
        e.count("sandbox.max_processes", s.max_processes, 1, 10_000);
        e.count("sandbox.output_chars", s.output_chars as u64, 1, 100_000_000);
    }
}
