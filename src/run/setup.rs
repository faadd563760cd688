//! Opening a run: a new one (fresh run directory, resolved config written, every agent from its base
//! model) or a resumed one (config and newest checkpoint read back, later metrics lines dropped so the
//! continuation rewrites them), plus the data, the frozen reference and the coach.
use super::{available_memory, checkpoint, MemoryEstimate, Run};
use crate::coach::MATHCHAT_TEMPLATE;
use crate::coach::{Coach, CoachLog, CoachPrompt, HttpCoach, HttpCoachConfig, LocalCoach, OtherAgents, RuleCoach};
use crate::data::{load_tasks, train_split, Task, TaskSampler, HOLDOUT_NAME};
use crate::loader::LoadedModel;
use crate::model::{self, Backend, BackendChoice};
use crate::optim::{warmup_steps, AdamWConfig, LrSchedule};
use crate::rollout::staged_sources;
use crate::run_config::{CoachBackend, DataConfig, LrSchedule as Schedule, Reward, RuleKind, RunConfig, Tool};
use crate::tokenizer::Tokenizer;
use crate::trainer::{Trainer, TrainerConfig};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Samples packed into one training forward pass, in tokens.
pub const MICRO_BATCH_TOKENS: usize = 4096;

/// How to open a run.
pub enum Open<'a> {
    /// A new run of this configuration.
    New(Box<RunConfig>),
    /// Continue the run in this directory from its newest checkpoint (later metrics are dropped).
    Resume(&'a Path),
    /// Load the run's newest checkpoint to evaluate it (nothing is dropped).
    Inspect(&'a Path),
}

pub(super) fn open(how: Open) -> Result<Run> {
    // A new run's directory is made here; if anything after fails, the guard removes what the attempt
    // wrote, so the same command can simply be run again.
    let mut fresh: Option<FreshDir> = None;
    let run = open_locked(how, &mut fresh);
    if let (Ok(_), Some(f)) = (&run, fresh.as_mut()) {
        f.keep = true;
    }
    run
}

fn open_locked(how: Open, fresh: &mut Option<FreshDir>) -> Result<Run> {
    let resuming = matches!(how, Open::Resume(_));
    // A resumed run is locked and read first; a new one is only checked to be startable: its directory is
    // made after every start-up check below has passed.
    let (mut cfg, existing) = match how {
        Open::Resume(dir) | Open::Inspect(dir) => {
            let lock = lock_dir(dir)?;
            (RunConfig::load(dir.join("config.toml"))?, Some((dir.to_path_buf(), lock)))
        }
        Open::New(cfg) => {
            // A configuration built in code is checked as a loaded one is.
            cfg.validate().map_err(|e| anyhow::anyhow!("invalid run configuration:\n{e}"))?;
            check_fresh(&cfg.run_dir())?;
            (*cfg, None)
        }
    };
    let backend = choose_backend(&cfg)?;
    // The run's config records the backend it runs on, so a resume does not silently switch.
    cfg.run.backend = match backend {
        Backend::Cpu => BackendChoice::Cpu,
        Backend::Cuda => BackendChoice::Cuda,
    };
    let pre = preflight(&cfg, backend)?;

    let (dir, lock, from) = match existing {
        Some((dir, lock)) => {
            if resuming {
                checkpoint::sweep(&dir)?;
            }
            let (candidates, unreadable) = checkpoint::complete(&dir)?;
            if candidates.is_empty() && !resuming {
                bail!("{} has no complete checkpoint{}", dir.display(), listed(&unreadable));
            }
            (dir, lock, Some((candidates, unreadable)))
        }
        None => {
            let dir = cfg.run_dir();
            let created = !dir.exists();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let lock = lock_dir(&dir)?;
            // Another process may have started here between the first check and the lock: its files are not
            // ours to clean up, so the guard is armed only once the directory is known to be ours.
            check_fresh(&dir)?;
            *fresh = Some(FreshDir { dir: dir.clone(), created, keep: false });
            // Written whole or not at all: a start killed here leaves a directory that counts as fresh.
            write_whole(&dir.join("config.toml"), &dir.join(CONFIG_TMP), &cfg.to_toml_string()?)?;
            (dir, lock, None)
        }
    };
    let Preflight { mut bases, train, eval_sets, sampler, coach } = pre;
    let references = bases.models.iter().map(|m| model::load(m, backend)).collect::<Result<Vec<_>>>()?;
    let (agents, step) = match from {
        None => (load_agents(&cfg, &bases, backend, None)?, 0),
        // A run stopped before its first checkpoint starts again from the base models: every step is a
        // function of the seed, so this is the same run.
        Some((candidates, unreadable)) if candidates.is_empty() => {
            eprintln!("{}: no complete checkpoint{}; starting again at step 0", dir.display(), listed(&unreadable));
            (load_agents(&cfg, &bases, backend, None)?, 0)
        }
        Some((candidates, unreadable)) => newest_usable(&cfg, &bases, backend, candidates, unreadable)?,
    };
    if resuming {
        drop_lines(&dir.join("metrics.jsonl"), |_, s| s > step)?;
        // An evaluation at `step` that wrote no summary was cut short: its problem lines go too, and `train`
        // evaluates that set again.
        let finished = super::evaluated_sets(&dir, step)?;
        let unfinished = |v: &serde_json::Value| v["dataset"].as_str().is_some_and(|d| !finished.contains(d));
        drop_lines(&dir.join(super::EVAL_SUMMARIES), |_, s| s > step)?;
        drop_lines(&dir.join(super::EVAL_PROBLEMS), |v, s| s > step || (s == step && unfinished(v)))?;
    }
    let coach = match coach {
        Some(c) => Some(c.with_log(CoachLog::open(&dir.join("coach_log.jsonl"))?)),
        None => None,
    };
    eprintln!("rewards: {}", cfg.reward_label());
    for m in &mut bases.models {
        m.weights = Default::default(); // only the config and tokenizer files are needed from here on
    }
    Ok(Run {
        _lock: lock,
        step,
        untrained_streak: 0,
        losses: Default::default(),
        cfg,
        dir,
        bases,
        agents,
        references,
        coach,
        train,
        eval_sets,
        sampler,
    })
}

/// The base models a team starts from: each distinct `base_model` loaded once, with its own tokenizer and
/// chat template; agent `i` starts from `models[of_agent[i]]`. After loading, only the config and tokenizer
/// files are kept (checkpoints are written with them).
pub struct Bases {
    pub models: Vec<LoadedModel>,
    pub toks: Vec<Tokenizer>,
    pub of_agent: Vec<usize>,
}

impl Bases {
    fn load(cfg: &RunConfig) -> Result<Bases> {
        let (mut models, mut toks, mut paths, mut of_agent) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..cfg.agents.len() {
            let path = cfg.agent_base_model(i);
            let b = match paths.iter().position(|p| p == path) {
                Some(b) => b,
                None => {
                    let m = crate::loader::load(path)?;
                    let tok = Tokenizer::new(&m.tokenizer, &m.config)
                        .with_context(|| format!("the tokenizer of {}", path.display()))?;
                    (models.push(m), toks.push(tok), paths.push(path.to_path_buf()));
                    models.len() - 1
                }
            };
            of_agent.push(b);
        }
        Ok(Bases { models, toks, of_agent })
    }

    /// Agent `i`'s tokenizer (and chat template).
    pub fn tok(&self, i: usize) -> &Tokenizer {
        &self.toks[self.of_agent[i]]
    }

    /// Agent `i`'s base model.
    pub fn model(&self, i: usize) -> &LoadedModel {
        &self.models[self.of_agent[i]]
    }

    /// Every agent's tokenizer, in agent order.
    pub fn agent_toks(&self) -> Vec<&Tokenizer> {
        (0..self.of_agent.len()).map(|i| self.tok(i)).collect()
    }
}

/// What the start-up checks load and keep.
struct Preflight {
    bases: Bases,
    train: Vec<Task>,
    eval_sets: Vec<(String, Vec<Task>)>,
    sampler: TaskSampler,
    coach: Option<Coach>,
}

/// Every check a run can make before it writes anything: the files exist, the base model and its tokenizer
/// load, the task files parse, the coach answers (or loads), the sandbox runs Python for agents with the
/// tool, and the memory the run needs is there.
fn preflight(cfg: &RunConfig, backend: Backend) -> Result<Preflight> {
    cfg.check_paths()?;
    let bases = Bases::load(cfg)?;
    let tasks = load_tasks(&cfg.data.train, &cfg.data)?;
    let split = train_split(tasks, &cfg.data, cfg.run.seed)?;
    let mut eval_sets = Vec::new();
    for path in &cfg.data.eval {
        let name = path.file_stem().map_or("eval".into(), |s| s.to_string_lossy().into_owned());
        eval_sets.push((name, load_tasks(path, &cfg.data)?));
    }
    if !split.holdout.is_empty() {
        eval_sets.push((HOLDOUT_NAME.to_string(), split.holdout));
    }
    check_staged(&cfg.data, split.train.iter().chain(eval_sets.iter().flat_map(|(_, tasks)| tasks)))?;
    let sampler = TaskSampler::new(split.train.len(), cfg.rl.prompts_per_step, cfg.run.seed)?;
    // The outcome-only baseline calls no coach.
    let coach = match cfg.rl.reward {
        Reward::Coach => {
            let coach = build_coach(cfg, backend)?;
            coach.probe().context("the coach is not usable")?;
            Some(coach)
        }
        Reward::Outcome => None,
    };
    if cfg.agents.iter().any(|a| a.tools.contains(&Tool::Python)) {
        check_sandbox(cfg)?;
    }
    if backend == Backend::Cpu {
        let sizes: Vec<(&crate::config::ModelConfig, usize)> =
            (bases.models.iter()).map(|m| (&m.config, m.weights.tensors.values().map(|t| t.numel()).sum())).collect();
        MemoryEstimate::of(&sizes, &bases.of_agent).check(available_memory()?)?;
    }
    Ok(Preflight { bases, train: split.train, eval_sets, sampler, coach })
}

/// Checks that every task's `data.stage_files` (and a DSBench task's answer file) exist, so a missing CSV
/// fails the start, not an episode.
fn check_staged<'t>(data: &DataConfig, tasks: impl Iterator<Item = &'t Task>) -> Result<()> {
    let (mut missing, mut examples) = (0, Vec::new());
    for task in tasks {
        let mut files = staged_sources(task, data)?;
        // A DSBench task's answers name its answer directory, which its grading reads.
        if task.info.is_some() {
            let answers = task.answers.first().map(|a| data.files_root.join(a).join(crate::dsbench::ANSWER_FILE));
            files.extend(answers.map(|a| ("its answers".to_string(), a)));
        }
        for (name, source) in files {
            if !source.is_file() {
                missing += 1;
                if examples.len() < 3 {
                    examples.push(format!("task `{}`: {name} from {}", task.id, source.display()));
                }
            }
        }
    }
    ensure!(
        missing == 0,
        "{missing} staged or answer files are missing (data.files_root = {}):{}",
        data.files_root.display(),
        listed(&examples)
    );
    Ok(())
}

/// Runs `print(6 * 7)` in the sandbox as an agent's code would run, after importing `sandbox.requires`, so a
/// missing interpreter or module, or a host that cannot isolate it, fails the start, not an action deep in
/// the run.
fn check_sandbox(cfg: &RunConfig) -> Result<()> {
    static CHECKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mappa-sandbox-check-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {} to check the sandbox in", dir.display()))?;
    let imports: String = cfg.sandbox.requires.iter().map(|m| format!("import {m}\n")).collect();
    let out = crate::sandbox::run_python(&format!("{imports}print(6 * 7)"), &dir, &cfg.sandbox.to_sandbox_config());
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.context("the Python tool's sandbox cannot run")?;
    if let Some(missing) = out.stderr.lines().find(|l| l.starts_with("ModuleNotFoundError")) {
        bail!(
            "the Python tool's interpreter ({}) lacks a module in sandbox.requires: {missing}; `bash tools/setup.sh` \
             installs the data-science environment at {}",
            cfg.sandbox.python.display(),
            crate::loader::setup_home()
                .map_or("$MAPPA_HOME/py-ds".into(), |h| h.join(crate::loader::PY_DS).display().to_string())
        );
    }
    ensure!(
        out.stdout.trim() == "42",
        "the Python tool's sandbox ran `print(6 * 7)` but it printed {:?} (stderr {:?})",
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// Every agent as a trainer: from its base model, or from checkpoint directory `ckpt` (weights and optimizer).
fn load_agents(cfg: &RunConfig, bases: &Bases, backend: Backend, ckpt: Option<&Path>) -> Result<Vec<Trainer>> {
    let mut agents = Vec::with_capacity(cfg.agents.len());
    for i in 0..cfg.agents.len() {
        let tc = trainer_config(cfg, i);
        agents.push(match ckpt {
            None => Trainer::new(model::load_for_training(bases.model(i), backend)?, tc, None)?,
            Some(ckpt) => {
                let d = ckpt.join(&cfg.agents[i].name);
                let m = crate::loader::load(&d)?;
                Trainer::new(model::load_for_training(&m, backend)?, tc, Some(&d.join(checkpoint::OPTIMIZER_FILE)))?
            }
        });
    }
    Ok(agents)
}

/// The agents of the newest checkpoint that loads and fits the run (its step within `run.steps`), and its
/// step. Passing over a newer one says why on stderr; when none is usable, the error lists every reason.
fn newest_usable(
    cfg: &RunConfig,
    bases: &Bases,
    backend: Backend,
    candidates: Vec<(PathBuf, checkpoint::State)>,
    mut unusable: Vec<String>,
) -> Result<(Vec<Trainer>, u64)> {
    for (ckpt, state) in candidates {
        let loaded = match state.step <= cfg.run.steps {
            true => load_agents(cfg, bases, backend, Some(&ckpt)),
            false => Err(anyhow::anyhow!("its step {} is beyond run.steps = {}", state.step, cfg.run.steps)),
        };
        match loaded {
            Ok(agents) => {
                if !unusable.is_empty() {
                    eprintln!(
                        "resuming from {} (step {}), passing over:{}",
                        ckpt.display(),
                        state.step,
                        listed(&unusable)
                    );
                }
                return Ok((agents, state.step));
            }
            Err(e) => unusable.push(format!("{}: {e:#}", ckpt.display())),
        }
    }
    bail!("no usable checkpoint:{}", listed(&unusable))
}

/// Reasons, one per line after a colon-ended lead.
fn listed(reasons: &[String]) -> String {
    reasons.iter().map(|r| format!("\n  {r}")).collect()
}

fn trainer_config(cfg: &RunConfig, agent: usize) -> TrainerConfig {
    let rl = &cfg.rl;
    let actions = rl.prompts_per_step * rl.samples_per_prompt * cfg.agents[agent].max_actions.max(1) as usize;
    let total = cfg.run.steps * rl.epochs_per_step as u64 * actions.div_ceil(rl.samples_per_optimizer_step) as u64;
    TrainerConfig {
        advantage: rl.advantage_config(),
        loss: rl.pg_loss_config(),
        adamw: AdamWConfig {
            betas: (rl.adam_beta1 as f32, rl.adam_beta2 as f32),
            eps: rl.adam_eps as f32,
            weight_decay: rl.weight_decay as f32,
        },
        schedule: LrSchedule {
            base_lr: rl.lr as f32,
            warmup_steps: warmup_steps(total, rl.warmup_ratio),
            total_steps: total,
            min_lr_ratio: match rl.lr_schedule {
                Schedule::Cosine => rl.lr_min_ratio as f32,
                Schedule::Constant => 1.0,
            },
        },
        max_grad_norm: rl.grad_clip as f32,
        samples_per_optimizer_step: rl.samples_per_optimizer_step,
        epochs: rl.epochs_per_step,
        micro_batch_tokens: MICRO_BATCH_TOKENS,
        temperature: cfg.sampling(agent).temperature as f32,
        recompute: true,
    }
}

/// The backend `run.backend` resolves to here (said on stderr), checked against the agents' devices: the
/// CPU backend has one device, 0.
fn choose_backend(cfg: &RunConfig) -> Result<Backend> {
    let backend = model::resolve_and_report(cfg.run.backend, model::Work::Training, "mappa train")?;
    for (i, a) in cfg.agents.iter().enumerate() {
        let device = cfg.agent_device(i);
        ensure!(
            backend != Backend::Cpu || device == 0,
            "agent {} is placed on device {device}, but the cpu backend has one device, 0",
            a.name
        );
    }
    Ok(backend)
}

/// The coach the configuration asks for (without a log yet); a local coach model runs on `backend`.
pub fn build_coach(cfg: &RunConfig, backend: Backend) -> Result<Coach> {
    let c = &cfg.coach;
    let prompt = CoachPrompt::new(c.prompt_template.as_deref().unwrap_or(MATHCHAT_TEMPLATE), c.tool_output_chars)?;
    let model = || c.model.clone().context("coach.model is required for this coach backend");
    Ok(match c.backend {
        CoachBackend::Http => {
            let hc = HttpCoachConfig {
                base_url: c.endpoint.clone().context("coach.endpoint is required for the http coach")?,
                model: model()?,
                api_key_env: c.api_key_env.clone(),
                timeout: Duration::from_secs_f64(c.timeout_s),
                max_retries: c.retries,
                max_in_flight: c.concurrency.max(1),
                ..HttpCoachConfig::default()
            };
            Coach::new(HttpCoach::new(hc)?, prompt, None)
        }
        CoachBackend::Local => {
            let local = LocalCoach::load(
                Path::new(&model()?),
                backend,
                c.max_tokens,
                c.temperature as f32,
                c.reply_prefix.clone(),
                c.score,
            )?;
            Coach::new(local, prompt, None)
        }
        CoachBackend::Rule => {
            let last = &cfg.agents.last().context("the run has no agents")?.name;
            let others = match c.rule {
                RuleKind::Final => OtherAgents::BoxedMatch { default: 5.0 },
                RuleKind::Process => OtherAgents::Process,
                RuleKind::Artifacts => OtherAgents::Artifacts,
            };
            Coach::new(RuleCoach::new(last, others, cfg.data.last_number_fallback)?, prompt, None)
        }
    })
}

/// Rewrites a JSON Lines file without the lines that `drop` (given the line and its "step") picks: what a
/// resumed run redoes. Lines without a readable step are not the resume's to judge: they are moved, as they
/// were, to `<file>.unreadable` (appended), and stderr says how many and where.
fn drop_lines(path: &Path, drop: impl Fn(&serde_json::Value, u64) -> bool) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let (mut keep, mut unreadable) = (String::new(), String::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = serde_json::from_str::<serde_json::Value>(line).ok();
        match parsed.as_ref().and_then(|v| Some((v, v["step"].as_u64()?))) {
            Some((v, s)) if !drop(v, s) => keep.push_str(&format!("{line}\n")),
            Some(_) => {}
            None => unreadable.push_str(&format!("{line}\n")),
        }
    }
    if !unreadable.is_empty() {
        let aside = PathBuf::from(format!("{}.unreadable", path.display()));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&aside)
            .and_then(|mut f| std::io::Write::write_all(&mut f, unreadable.as_bytes()))
            .with_context(|| format!("keeping the unreadable lines of {} in {}", path.display(), aside.display()))?;
        eprintln!(
            "{}: {} unreadable lines (no JSON object with a step) moved to {}",
            path.display(),
            unreadable.lines().count(),
            aside.display()
        );
    }
    write_whole(path, &PathBuf::from(format!("{}.partial", path.display())), &keep)
}

/// Writes `contents` to `tmp`, then renames it to `path`: a process killed meanwhile leaves the old file or
/// the new one, whole, never part of one.
fn write_whole(path: &Path, tmp: &Path, contents: &str) -> Result<()> {
    std::fs::write(tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The lock file inside a run directory, held by the process working on the run.
const LOCK_FILE: &str = ".lock";
/// `config.toml` while it is being written.
const CONFIG_TMP: &str = ".config.toml.partial";

/// Takes the run directory's lock (an advisory lock on `dir/.lock`, released when the process ends, however
/// it ends): one process per run, so two cannot interleave metrics or checkpoints.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // A lock can outlive the File that took it by the fork-exec window of a child process that another
    // thread of this process spawns (the child holds a copy of every descriptor until exec closes it), so a
    // busy lock is tried again for up to a second before it is taken for another process's.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if attempt <= 20 => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!(
                    "{} is in use by another mappa process (it holds {LOCK_FILE}); wait for it to finish",
                    dir.display()
                )
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// A new run's directory during start-up: removed again (or emptied, if it existed empty) unless the start
/// succeeded.
struct FreshDir {
    dir: std::path::PathBuf,
    created: bool,
    keep: bool,
}

impl Drop for FreshDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Everything inside was written by this attempt: check_fresh found the directory empty.
        let _ = match self.created {
            true => std::fs::remove_dir_all(&self.dir),
            false => std::fs::read_dir(&self.dir).map(|entries| {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                }
            }),
        };
    }
}

/// Checks that `dir` can start a new run: absent, or empty but for a lock file and a config that a killed
/// start left half-written.
fn check_fresh(dir: &Path) -> Result<()> {
    let busy = dir.is_dir()
        && std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .any(|e| e.file_name() != LOCK_FILE && e.file_name() != CONFIG_TMP);
    ensure!(!busy, "{} already holds a run: resume it with --resume {0}, or set run.dir elsewhere", dir.display());
    Ok(())
}
