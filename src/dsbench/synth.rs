//! Synthetic DSBench tasks: small seeded tabular tasks in exactly the real layout, so the DSBench pipeline
//! runs offline (the real CSVs are not available here) with `data.files_root` pointed at the output.
//!
//! [`write_tasks`] writes under `out`, as DSBench's processed data and MAPPA's task files have it:
//! - `data/DSBench/data/data_resplit/<task_id>/train.csv` (id, features, target) and `test.csv` (the same
//!   without the target), `data/DSBench/data/answers/<task_id>/test_answer.csv` (id, target);
//! - [`TRAIN_FILE`] and [`EVAL_FILE`], JSON Lines task records with the real fields (a prompt in the
//!   cleaned-prompt style, `answer` null, `metadata` paths relative to `out`), and [`INFO_FILE`], the
//!   cleaned-prompts-format object for every task, which the grader reads.
//!
//! Task `i` of a split follows recipe `i mod 6`, so any six consecutive tasks cover every kind: binary
//! classification scored by roc_auc (labels 0/1) or accuracy (labels False/True), three-class
//! classification with string labels (accuracy), and regression scored by rmse, mae or rmsle (a count).
//! A task has `features - 1` numeric columns (`feature_1`, ...; one of them about 10 % empty) and one
//! categorical string column. The target follows a latent score: a weighted sum of up to three numeric
//! features (standard normal before scaling) plus an effect per category, standardised; a binary label
//! is drawn with probability sigmoid(2.5 x score + bias), the three classes by thresholds on two noisy
//! scores, a number is center + spread x (score + 0.4 noise). So a simple model beats a constant clearly,
//! and the remaining features are noise. Every task is a pure function of (seed, split, index); its id
//! names the split, so train and eval tasks are distinct. A draw whose train or test rows lack one of the
//! labels is drawn again (the next attempt in the seed), so every class can be learnt and AUC is defined.
use super::grade::ANSWER_FILE;
use super::info::{TargetColumn, TaskInfo, TaskMeta, TaskRecord};
use super::metrics::Metric;
use crate::data::derive_seed;
use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_TRAIN_TASKS: usize = 12;
pub const DEFAULT_EVAL_TASKS: usize = 6;
/// Small on purpose: tiny models run the pipeline in a 10-minute CI preset.
pub const DEFAULT_TRAIN_ROWS: usize = 200;
pub const DEFAULT_TEST_ROWS: usize = 80;
pub const DEFAULT_FEATURES: usize = 6;

/// The task files [`write_tasks`] writes in its output directory (no `eval`/`test` in the train file's
/// name: `data.eval_only_markers` would refuse it).
pub const TRAIN_FILE: &str = "synthetic_dsbench_modeling_train.jsonl";
pub const EVAL_FILE: &str = "synthetic_dsbench_modeling_eval.jsonl";
pub const INFO_FILE: &str = "synthetic_dsbench_modeling_cleaned_prompts.json";

/// Where the CSVs go, relative to the files root, as in the real task records.
const DATA_DIR: &str = "./data/DSBench/data";

/// Knobs of the generator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TabularConfig {
    pub seed: u64,
    pub train_tasks: usize,
    pub eval_tasks: usize,
    /// Rows of each task's train.csv and test.csv.
    pub train_rows: usize,
    pub test_rows: usize,
    /// Feature columns: `features - 1` numeric ones and one categorical.
    pub features: usize,
}

impl Default for TabularConfig {
    fn default() -> Self {
        TabularConfig {
            seed: 0,
            train_tasks: DEFAULT_TRAIN_TASKS,
            eval_tasks: DEFAULT_EVAL_TASKS,
            train_rows: DEFAULT_TRAIN_ROWS,
            test_rows: DEFAULT_TEST_ROWS,
            features: DEFAULT_FEATURES,
        }
    }
}

/// What [`write_tasks`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// The train and eval task files (`data.train`, `data.eval`).
    pub train: PathBuf,
    pub eval: PathBuf,
    /// The cleaned-prompts-format file of every task (metric, id and target columns).
    pub info: PathBuf,
    /// The directory the records' paths are relative to (`data.files_root`): the output directory.
    pub files_root: PathBuf,
}

/// What a task predicts and how its target is drawn (module docs).
enum Target {
    Binary([&'static str; 2]),
    Classes([&'static str; 3]),
    /// Rounded to `decimals`; with `log`, the exponential of the value, rounded: a count.
    Number {
        center: f64,
        spread: f64,
        log: bool,
        decimals: usize,
    },
}

/// One kind of task: its story, metric, target and categorical column.
struct Recipe {
    slug: &'static str,
    task: &'static str,
    metric: Metric,
    target_column: &'static str,
    target: Target,
    category: &'static str,
    levels: &'static [&'static str],
}

const RECIPES: [Recipe; 6] = [
    Recipe {
        slug: "bank-churn",
        task: "Predict whether a bank customer leaves (binary classification).",
        metric: Metric::RocAuc,
        target_column: "Exited",
        target: Target::Binary(["0", "1"]),
        category: "Geography",
        levels: &["France", "Germany", "Spain"],
    },
    Recipe {
        slug: "house-prices",
        task: "Predict the sale price of a house in thousands of dollars (regression).",
        metric: Metric::Rmse,
        target_column: "price",
        target: Target::Number { center: 200.0, spread: 50.0, log: false, decimals: 1 },
        category: "ocean_proximity",
        levels: &["<1H OCEAN", "INLAND", "NEAR BAY", "NEAR OCEAN"],
    },
    Recipe {
        slug: "product-tier",
        task: "Predict the price tier of a product (multi-class classification).",
        metric: Metric::Accuracy,
        target_column: "tier",
        target: Target::Classes(["Budget", "Standard", "Premium"]),
        category: "origin",
        levels: &["north", "south", "east", "west"],
    },
    Recipe {
        slug: "delivery-time",
        task: "Predict how many minutes a delivery takes (regression).",
        metric: Metric::Mae,
        target_column: "minutes",
        target: Target::Number { center: 35.0, spread: 8.0, log: false, decimals: 1 },
        category: "vehicle",
        levels: &["bike", "car", "scooter"],
    },
    Recipe {
        slug: "passenger-transport",
        task: "Predict whether a passenger was transported to another dimension (binary classification).",
        metric: Metric::Accuracy,
        target_column: "Transported",
        target: Target::Binary(["False", "True"]),
        category: "HomePlanet",
        levels: &["Earth", "Europa", "Mars"],
    },
    Recipe {
        slug: "bike-rentals",
        task: "Predict how many bikes are rented in an hour (regression on counts).",
        metric: Metric::Rmsle,
        target_column: "count",
        target: Target::Number { center: 4.0, spread: 0.6, log: true, decimals: 0 },
        category: "season",
        levels: &["spring", "summer", "autumn", "winter"],
    },
];

/// Rows of one CSV file.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// One draw of a task's cells, train rows first.
struct Drawn {
    /// id and feature columns.
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    targets: Vec<String>,
    /// The numeric column with empty cells.
    gappy: usize,
}

/// One generated task.
struct SynthTask {
    id: String,
    train: Table,
    test: Table,
    answer: Table,
    record: TaskRecord,
    info: TaskInfo,
}

impl TabularConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=1000).contains(&self.train_tasks) && (1..=1000).contains(&self.eval_tasks),
            "train and eval task counts must be in [1, 1000], got {} and {}",
            self.train_tasks,
            self.eval_tasks
        );
        ensure!(
            (20..=100_000).contains(&self.train_rows) && (10..=100_000).contains(&self.test_rows),
            "train rows must be in [20, 100000] and test rows in [10, 100000], got {} and {}",
            self.train_rows,
            self.test_rows
        );
        ensure!((2..=50).contains(&self.features), "features must be in [2, 50], got {}", self.features);
        Ok(())
    }

    /// Task `index` of split `split` (0 train, 1 eval) named `name`; module docs for the recipe.
    fn task(&self, split: u64, name: &str, index: usize) -> Result<SynthTask> {
        let recipe = &RECIPES[index % RECIPES.len()];
        let id = format!("synthetic-{name}-{index:03}-{}", recipe.slug);
        for attempt in 0..100 {
            let seed = derive_seed(&[self.seed, split, index as u64, attempt]);
            let drawn = self.draw(recipe, &mut ChaCha8Rng::seed_from_u64(seed));
            let (train_targets, test_targets) = drawn.targets.split_at(self.train_rows);
            let labels: &[&str] = match &recipe.target {
                Target::Binary(l) => l,
                Target::Classes(l) => l,
                Target::Number { .. } => &[],
            };
            if labels.iter().all(|l| train_targets.iter().any(|t| t == l) && test_targets.iter().any(|t| t == l)) {
                return Ok(assemble(recipe, id, drawn, self.train_rows));
            }
        }
        anyhow::bail!("task {id}: no draw in 100 has every label in both train and test rows; use more rows")
    }

    fn draw(&self, recipe: &Recipe, rng: &mut ChaCha8Rng) -> Drawn {
        let numeric = self.features - 1;
        let n = self.train_rows + self.test_rows;
        let informative = numeric.min(3);
        let weights = |rng: &mut ChaCha8Rng| -> Vec<f64> {
            (0..informative)
                .map(|_| rng.random_range(0.5..1.5) * if rng.random_bool(0.5) { 1.0 } else { -1.0 })
                .collect()
        };
        let (w1, w2) = (weights(rng), weights(rng));
        let effects =
            |rng: &mut ChaCha8Rng| -> Vec<f64> { recipe.levels.iter().map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (e1, e2) = (effects(rng), effects(rng));
        let means: Vec<f64> = (0..numeric).map(|_| rng.random_range(0.0..100.0)).collect();
        let sds: Vec<f64> = (0..numeric).map(|_| rng.random_range(1.0..20.0)).collect();
        let gappy = rng.random_range(0..numeric);
        let bias = rng.random_range(-1.0..0.5);
        let first_id = rng.random_range(1000..50_000usize);

        let z: Vec<Vec<f64>> = (0..n).map(|_| (0..numeric).map(|_| normal(rng)).collect()).collect();
        let level: Vec<usize> = (0..n).map(|_| rng.random_range(0..recipe.levels.len())).collect();
        let score = |w: &[f64], e: &[f64]| -> Vec<f64> {
            standardise((0..n).map(|r| w.iter().zip(&z[r]).map(|(a, b)| a * b).sum::<f64>() + e[level[r]]).collect())
        };
        let (s1, s2) = (score(&w1, &e1), score(&w2, &e2));

        let targets: Vec<String> = (0..n)
            .map(|r| match &recipe.target {
                Target::Binary(labels) => {
                    let p = 1.0 / (1.0 + (-(2.5 * s1[r] + bias)).exp());
                    labels[usize::from(rng.random_bool(p))].to_string()
                }
                Target::Classes(labels) => {
                    let (u, v) = (s1[r] + 0.5 * normal(rng), s2[r] + 0.5 * normal(rng));
                    let class = match (u > 0.4, v > 0.0) {
                        (true, _) => 2,
                        (false, true) => 1,
                        (false, false) => 0,
                    };
                    labels[class].to_string()
                }
                Target::Number { center, spread, log, decimals } => {
                    let x = center + spread * (s1[r] + 0.4 * normal(rng));
                    let x = if *log { x.exp().round() } else { x };
                    format!("{x:.decimals$}")
                }
            })
            .collect();
        let rows: Vec<Vec<String>> = (0..n)
            .map(|r| {
                let mut row = vec![(first_id + r).to_string()];
                for j in 0..numeric {
                    let empty = j == gappy && rng.random_bool(0.1);
                    row.push(if empty { String::new() } else { format!("{:.3}", means[j] + sds[j] * z[r][j]) });
                }
                row.push(recipe.levels[level[r]].to_string());
                row
            })
            .collect();
        let mut header = vec!["id".to_string()];
        header.extend((1..=numeric).map(|j| format!("feature_{j}")));
        header.push(recipe.category.to_string());
        Drawn { header, rows, targets, gappy }
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // in (0, 1]: ln is finite
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `x` shifted and scaled to mean 0 and standard deviation 1 (only shifted when constant).
fn standardise(x: Vec<f64>) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let sd = if sd > 0.0 { sd } else { 1.0 };
    x.into_iter().map(|v| (v - mean) / sd).collect()
}

/// Splits a draw into the task's files, record and info.
fn assemble(recipe: &Recipe, id: String, drawn: Drawn, train_rows: usize) -> SynthTask {
    let Drawn { header, rows, targets, gappy } = drawn;
    let target = recipe.target_column.to_string();
    let with_target = |rows: &[Vec<String>], targets: &[String]| -> Vec<Vec<String>> {
        rows.iter().zip(targets).map(|(row, t)| row.iter().cloned().chain([t.clone()]).collect()).collect()
    };
    let (train_cells, test_cells) = rows.split_at(train_rows);
    let (train_targets, test_targets) = targets.split_at(train_rows);
    let train = Table {
        header: header.iter().cloned().chain([target.clone()]).collect(),
        rows: with_target(train_cells, train_targets),
    };
    let answer = Table {
        header: vec!["id".to_string(), target.clone()],
        rows: test_cells.iter().zip(test_targets).map(|(row, t)| vec![row[0].clone(), t.clone()]).collect(),
    };
    let test = Table { header, rows: test_cells.to_vec() };

    let prompt = describe(recipe, &test.rows, train_targets, gappy);
    let data_type = match recipe.target {
        Target::Number { .. } => "regression",
        _ => "classification",
    };
    let record = TaskRecord {
        prompt: prompt.clone(),
        answer: None,
        metadata: TaskMeta {
            task_id: id.clone(),
            task_type: "data_modeling".into(),
            data_type: data_type.into(),
            train_file: format!("{DATA_DIR}/data_resplit/{id}/train.csv"),
            test_file: format!("{DATA_DIR}/data_resplit/{id}/test.csv"),
            answer_dir: format!("{DATA_DIR}/answers/{id}"),
            url: String::new(),
        },
    };
    let info = TaskInfo {
        cleaned_prompt: prompt,
        metric: recipe.metric.name().into(),
        task_type: data_type.into(),
        target_column: TargetColumn::One(target),
        id_column: "id".into(),
    };
    SynthTask { id, train, test, answer, record, info }
}

/// The task description, in the cleaned prompts' shape: task, metric, submission format with two example
/// rows (the first two test ids), data fields, files.
fn describe(recipe: &Recipe, test_rows: &[Vec<String>], train_targets: &[String], gappy: usize) -> String {
    let target = recipe.target_column;
    let (examples, note, kind) = match &recipe.target {
        Target::Binary(l) if recipe.metric == Metric::RocAuc => (
            ["0.9", "0.1"].map(String::from),
            format!("(predict the probability that {target} is {})\n", l[1]),
            format!("the binary target ({} or {})", l[0], l[1]),
        ),
        Target::Binary(l) => (
            [l[1], l[0]].map(String::from),
            format!("(predict {} or {})\n", l[0], l[1]),
            format!("the binary target ({} or {})", l[0], l[1]),
        ),
        Target::Classes(l) => (
            [l[0], l[2]].map(String::from),
            format!("(predict one of {})\n", l.join(", ")),
            format!("the categorical target ({})", l.join(", ")),
        ),
        Target::Number { log, .. } => (
            [train_targets[0].clone(), train_targets[1].clone()],
            String::new(),
            if *log { "the target, a non-negative count".to_string() } else { "the continuous target".to_string() },
        ),
    };
    let numeric = test_rows[0].len() - 2;
    let features = match numeric {
        1 => "- feature_1: numeric, with missing values".to_string(),
        n => format!("- feature_1 to feature_{n}: numeric; feature_{} has missing values", gappy + 1),
    };
    let direction = if recipe.metric.higher_is_better() { "higher" } else { "lower" };
    format!(
        "Task: {task}\n\nEvaluation: {title} - {direction} is better.\n\nSubmission Format:\nid,{target}\n{id0},{ex0}\n\
         {id1},{ex1}\n{note}\nData Fields:\n- id: row identifier\n{features}\n- {category}: categorical ({levels})\n\
         - {target}: {kind}; train.csv only\n\nFiles:\n- train.csv: training dataset\n- test.csv: test dataset",
        task = recipe.task,
        title = recipe.metric.title(),
        id0 = test_rows[0][0],
        id1 = test_rows[1][0],
        ex0 = examples[0],
        ex1 = examples[1],
        category = recipe.category,
        levels = recipe.levels.join(", "),
    )
}

fn write_csv(path: &Path, table: &Table) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut writer = csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    for row in std::iter::once(&table.header).chain(&table.rows) {
        writer.write_record(row).with_context(|| format!("writing {}", path.display()))?;
    }
    writer.flush().with_context(|| format!("writing {}", path.display()))
}

/// `root` joined with a record's `./`-relative path.
fn under(root: &Path, relative: &str) -> PathBuf {
    root.join(relative.trim_start_matches("./"))
}

/// Writes every task of `cfg` under `out` (module docs for the layout); returns the files to point a run at.
pub fn write_tasks(cfg: &TabularConfig, out: &Path) -> Result<Written> {
    cfg.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut infos = BTreeMap::new();
    for (split, name, count, file) in
        [(0, "train", cfg.train_tasks, TRAIN_FILE), (1, "eval", cfg.eval_tasks, EVAL_FILE)]
    {
        let mut lines = String::new();
        for index in 0..count {
            let task = cfg.task(split, name, index)?;
            let meta = &task.record.metadata;
            write_csv(&under(out, &meta.train_file), &task.train)?;
            write_csv(&under(out, &meta.test_file), &task.test)?;
            write_csv(&under(out, &meta.answer_dir).join(ANSWER_FILE), &task.answer)?;
            lines += &(serde_json::to_string(&task.record)? + "\n");
            infos.insert(task.id, task.info);
        }
        let path = out.join(file);
        std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let info = out.join(INFO_FILE);
    std::fs::write(&info, serde_json::to_string_pretty(&infos)? + "\n")
        .with_context(|| format!("writing {}", info.display()))?;
    Ok(Written { train: out.join(TRAIN_FILE), eval: out.join(EVAL_FILE), info, files_root: out.to_path_buf() })
}
