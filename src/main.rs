//! The `mappa` command line: `generate` (one streamed prompt, or a JSONL file of prompts in and completions
//! with token ids and log-probs out), `convert` (any supported model to a Hugging Face directory), `info`.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use mappa::engine::{generate, generate_batch, EngineConfig, Request};
use mappa::model::{BackendChoice, Work};
use mappa::run::{Open, Run};
use mappa::run_config::RunConfig;
use mappa::sample::SamplingParams;
use mappa::tensor::DType;
use mappa::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use serde::Deserialize;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "mappa", version, about = "Train teams of LLM agents with per-action coach rewards (MAPPA)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a model (a Hugging Face directory or a .gguf file).
    Generate(GenerateArgs),
    /// Convert a model (HF directory or .gguf) to a Hugging Face directory.
    Convert {
        input: PathBuf,
        out_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = OutDType::Bf16)]
        dtype: OutDType,
    },
    /// Print what this build has: CUDA kernels, nvcc version, a CUDA device.
    Info,
    /// Train a team of agents (MAPPA). Without --config: the quickstart job (MathChat on a few GSM8K
    /// problems, SmolLM2 agents and coach, CPU), ending with the report's path.
    Train(TrainArgs),
    /// Evaluate a run's newest checkpoint on its eval sets (appends to RUN_DIR/eval.jsonl and
    /// RUN_DIR/eval_problems.jsonl), or with --config the base team of a configuration, untrained, in a new
    /// run directory.
    Eval(EvalArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models).
    Serve(mappa::serve::ServeArgs),
    /// Draw a training run's curves and a one-page HTML summary.
    Report(mappa::report::ReportArgs),
    /// Write a generated task set: arithmetic word problems with exact integer answers, as test.jsonl,
    /// valid.jsonl and train.jsonl (disjoint; the test set depends only on the seed, its size and the knobs).
    Tasks(TasksArgs),
    /// Write synthetic DSBench tabular tasks in the real layout (CSVs under data/DSBench/data, the task files
    /// and their cleaned-prompts info), for `data.files_root`, `data.train`, `data.eval` and `data.task_info`.
    DsbenchTasks(DsbenchTasksArgs),
}

#[derive(clap::Args)]
struct DsbenchTasksArgs {
    /// Directory to write into (it becomes data.files_root).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = mappa::dsbench::synth::DEFAULT_TRAIN_TASKS)]
    train: usize,
    #[arg(long, default_value_t = mappa::dsbench::synth::DEFAULT_EVAL_TASKS)]
    eval: usize,
    /// Rows of each task's train.csv...
    #[arg(long, default_value_t = mappa::dsbench::synth::DEFAULT_TRAIN_ROWS)]
    train_rows: usize,
    /// ...and of its test.csv.
    #[arg(long, default_value_t = mappa::dsbench::synth::DEFAULT_TEST_ROWS)]
    test_rows: usize,
}

#[derive(clap::Args)]
struct TasksArgs {
    /// Directory to write test.jsonl, valid.jsonl and train.jsonl into.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2000)]
    train: usize,
    #[arg(long, default_value_t = 200)]
    valid: usize,
    #[arg(long, default_value_t = 400)]
    test: usize,
    /// Operations per problem: at least this many...
    #[arg(long, default_value_t = mappa::arith::DEFAULT_MIN_STEPS)]
    min_steps: usize,
    /// ...and at most this many.
    #[arg(long, default_value_t = mappa::arith::DEFAULT_MAX_STEPS)]
    max_steps: usize,
    /// Largest starting value and addend.
    #[arg(long, default_value_t = mappa::arith::DEFAULT_MAGNITUDE)]
    magnitude: u64,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// A run configuration (TOML file) or a preset name (mathchat, dsbench, dsbench-quick).
    #[arg(long, conflicts_with = "resume")]
    config: Option<String>,
    /// Continue the run in this directory from its newest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Override a configuration value, e.g. --set rl.lr=2e-6 (repeatable).
    #[arg(long = "set", conflicts_with = "resume")]
    overrides: Vec<String>,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// A training run's directory.
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    run_dir: Option<PathBuf>,
    /// A run configuration (TOML file) or a preset whose base team is evaluated (step 0).
    #[arg(long)]
    config: Option<String>,
    /// Override a configuration value (repeatable), with --config.
    #[arg(long = "set", requires = "config")]
    overrides: Vec<String>,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[arg(long)]
    model: PathBuf,
    /// One prompt; its completion is streamed to stdout.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    prompt: Option<String>,
    /// A JSONL file, one {"prompt": "..."} or {"messages": [{"role", "content"}, ...]} per line; one JSON
    /// line per prompt goes to stdout with the completion, its token ids and their log-probs.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// A system message placed before the prompt (chat mode).
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as raw text instead of formatting it with the model's chat template.
    #[arg(long)]
    no_chat: bool,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 means no top-k cut.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto: CUDA when it can run here, else the CPU.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    device: BackendChoice,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutDType {
    Bf16,
    F32,
}

/// One line of a --prompts file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    /// Carried through to the output line unchanged.
    id: Option<serde_json::Value>,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => cmd_generate(a),
        Command::Convert { input, out_dir, dtype } => {
            let m = mappa::loader::load(&input)?;
            let dtype = match dtype {
                OutDType::Bf16 => DType::BF16,
                OutDType::F32 => DType::F32,
            };
            mappa::hf::write_dir(&m, &out_dir, dtype).with_context(|| format!("writing {}", out_dir.display()))?;
            eprintln!("wrote {} ({} tensors, {dtype:?})", out_dir.display(), m.weights.tensors.len());
            Ok(())
        }
        Command::Train(a) => cmd_train(a),
        Command::Eval(a) => match (&a.run_dir, &a.config) {
            (Some(dir), _) => Run::open(Open::Inspect(dir))?.evaluate(),
            (None, Some(config)) => Run::open(Open::New(Box::new(load_config(config, &a.overrides)?)))?.evaluate(),
            (None, None) => unreachable!("clap requires one of them"),
        },
        Command::Serve(a) => mappa::serve::run(a),
        Command::Tasks(a) => write_tasks(&a),
        Command::DsbenchTasks(a) => write_dsbench_tasks(&a),
        Command::Report(a) => mappa::report::run(a),
        Command::Info => {
            println!(
                "cuda kernels: {}",
                if mappa::kernels::BUILT { mappa::kernels::NVCC_VERSION } else { "not built (no nvcc at build time)" }
            );
            println!(
                "cuda device: {}",
                match mappa::cuda::device() {
                    Some(ctx) => format!("{:?}", ctx.compute_capability().ok()),
                    None => "none".into(),
                }
            );
            for (work, what) in [(Work::Inference, "generate, serve"), (Work::Training, "train")] {
                match mappa::model::auto_cpu_reason(work) {
                    None => println!("backend (auto) for {what}: cuda"),
                    Some(why) => println!("backend (auto) for {what}: cpu, since {why}"),
                }
            }
            println!("cpu threads: {}", rayon::current_num_threads());
            Ok(())
        }
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let mut run = match (&a.resume, &a.config) {
        (Some(dir), _) => Run::open(Open::Resume(dir))?,
        (None, None) => Run::open(Open::New(Box::new(Run::quickstart()?.with_overrides(&a.overrides)?)))?,
        (None, Some(config)) => Run::open(Open::New(Box::new(load_config(config, &a.overrides)?)))?,
    };
    let dir = run.train()?;
    let index = mappa::report::write_report(&dir)?;
    println!("{}", index.display());
    Ok(())
}

/// `--config` (a file, else a preset name) with `--set` overrides applied.
fn load_config(config: &str, overrides: &[String]) -> Result<RunConfig> {
    let cfg = match Path::new(config).is_file() {
        true => RunConfig::load(config)?,
        false => Run::preset(config).with_context(|| {
            format!("--config {config}: neither a file nor a preset ({})", Run::preset_names().join(", "))
        })?,
    };
    cfg.with_overrides(overrides)
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let backend = mappa::model::resolve_and_report(a.device, mappa::model::Work::Inference, "mappa generate")?;
    let params =
        SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed, top_logprobs: 0 };
    params.validate()?;
    let loaded = mappa::loader::load(&a.model)?;
    let tok = Tokenizer::new(&loaded.tokenizer, &loaded.config)?;
    let model = mappa::model::load(&loaded, backend)
        .with_context(|| format!("building the {backend} model from {}", a.model.display()))?;
    drop(loaded);
    let encode = |prompt: Option<&str>, messages: Option<Vec<ChatMessage>>| -> Result<Vec<u32>> {
        if let Some(messages) = messages {
            return tok.encode_chat(&messages);
        }
        let prompt = prompt.context("a prompt line needs \"prompt\" or \"messages\"")?;
        if a.no_chat {
            return tok.encode(prompt, true);
        }
        let mut messages: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::new("system", s)).collect();
        messages.push(ChatMessage::new("user", prompt));
        tok.encode_chat(&messages)
    };

    if let Some(prompt) = &a.prompt {
        let ids = encode(Some(prompt), None)?;
        let mut stream = StreamDecoder::new();
        let mut stdout = std::io::stdout().lock();
        let g = generate(model.as_ref(), &ids, a.max_new_tokens, params, tok.stop_ids(), |id| {
            stdout.write_all(stream.push(&tok, id)?.as_bytes())?;
            Ok(stdout.flush()?)
        })?;
        writeln!(stdout)?;
        let n = g.tokens.len();
        eprintln!(
            "[{} prompt tokens in {:.2} s ({:.0} tok/s); {n} new tokens in {:.2} s ({:.1} tok/s); finish: {:?}]",
            ids.len(),
            g.prefill_s,
            ids.len() as f64 / g.prefill_s,
            g.decode_s,
            n as f64 / g.decode_s.max(1e-9),
            g.finish
        );
        return Ok(());
    }

    // The whole file is one continuous batch; results are written in file order.
    let path = a.prompts.as_deref().expect("clap requires --prompt or --prompts");
    let lines = read_prompt_lines(path)?;
    let mut reqs = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        let prompt = encode(line.prompt.as_deref(), line.messages.clone())
            .with_context(|| format!("{} line {}", path.display(), n + 1))?;
        let stop_ids = tok.stop_ids().to_vec();
        reqs.push(Request { prompt, max_new_tokens: a.max_new_tokens, stop_ids, samples: vec![params] });
    }
    let prompts: Vec<Vec<u32>> = reqs.iter().map(|r| r.prompt.clone()).collect();
    let generated = generate_batch(model.as_ref(), reqs, &EngineConfig::default())?;
    let mut stdout = std::io::stdout().lock();
    for ((line, ids), mut g) in lines.into_iter().zip(prompts).zip(generated) {
        let g = g.remove(0);
        let out = serde_json::json!({
            "id": line.id,
            "prompt_token_ids": ids,
            "completion": tok.decode(&g.tokens, true)?,
            "token_ids": g.tokens,
            "logprobs": g.logprobs,
            "finish_reason": g.finish,
        });
        writeln!(stdout, "{out}")?;
    }
    Ok(())
}

/// All lines are parsed before any generation starts, so a bad line fails fast and names itself.
fn read_prompt_lines(path: &Path) -> Result<Vec<PromptLine>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let p: PromptLine = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a prompt object", path.display(), n + 1))?;
        if p.prompt.is_none() == p.messages.is_none() {
            bail!("{} line {}: give exactly one of \"prompt\" and \"messages\"", path.display(), n + 1);
        }
        out.push(p);
    }
    Ok(out)
}

/// `mappa tasks`.
fn write_dsbench_tasks(a: &DsbenchTasksArgs) -> Result<()> {
    let cfg = mappa::dsbench::TabularConfig {
        seed: a.seed,
        train_tasks: a.train,
        eval_tasks: a.eval,
        train_rows: a.train_rows,
        test_rows: a.test_rows,
        ..Default::default()
    };
    let w = mappa::dsbench::write_tasks(&cfg, &a.out)?;
    println!("data.files_root = {:?}", w.files_root);
    println!("data.train = {:?}", w.train);
    println!("data.eval = [{:?}]", w.eval);
    println!("data.task_info = {:?}", w.info);
    Ok(())
}

fn write_tasks(a: &TasksArgs) -> Result<()> {
    let cfg = mappa::arith::ArithConfig {
        seed: a.seed,
        min_steps: a.min_steps,
        max_steps: a.max_steps,
        magnitude: a.magnitude,
    };
    for (path, count) in cfg.write_splits(&a.out, [a.test, a.valid, a.train])? {
        eprintln!("{}: {count} problems", path.display());
    }
    Ok(())
}
