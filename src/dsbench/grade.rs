//! Grading a DSBench `submission.csv` against the task's answer file, `<answer_dir>/test_answer.csv`.
//!
//! [`grade_submission`] never fails and never panics: every problem (an unsupported metric, a missing or
//! unreadable file, a header without the id or a target column, a duplicate, empty, missing or extra id,
//! an unparsable, non-finite or out-of-domain value) is an invalid [`Grade`] with a one-line reason, since
//! the grade is shown to the coach and logged, and an agent's bad file is an outcome, not an error.
//!
//! Rules:
//! - Rows are joined by id, so any row order scores the same; the submission must hold every test id once
//!   and no other. (The reference code paired rows by position and scored only the second column.)
//! - Header names must equal the answer's (surrounding spaces ignored); extra columns are ignored.
//! - Cells compare as trimmed strings, except that plain decimals compare by value: `1`, `1.0` and `+01`
//!   are the same label or id, `1e0` is not (no exponents, so long numeric ids never lose digits).
//! - Domains: `rmsle` needs values >= 0 on both sides; `roc_auc` and `log_loss` need probabilities in
//!   [0, 1]; `qwk` needs integer ratings; the binary metrics (`f1`, `roc_auc`, `log_loss` with one target,
//!   `normalized_gini`) need exactly two classes in the answer column, the positive one being the larger
//!   (by value when both are numbers, else in string order: scikit-learn's `classes_[1]`, so 1 over 0 and
//!   True over False). An `f1` prediction that is not the positive label counts as negative.
//! - Several target columns: [`Columns::Mean`] metrics score each column and average (MCRMSE, mean
//!   column-wise RMSLE, mean AUC); `log_loss` reads them as the probabilities of one-hot answer classes
//!   (multi-class log loss); `accuracy`, `f1`, `f1_micro` and `qwk` with several columns are invalid as
//!   unsupported.
//!
//! [`Grade::quality`] maps the value to [0, 1] for a rule coach (its docs); for the error metrics it
//! compares with [`Grade::baseline`], the metric of a constant prediction computed from the answer file, so
//! it needs nothing task-specific.
use super::info::TaskInfo;
use super::metrics::{self, Columns, Metric};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The answer file's name inside a task's answer directory (DSBench's layout).
pub const ANSWER_FILE: &str = "test_answer.csv";

/// The file the last agent of a DSBench pipeline writes and the episode is graded on.
pub const SUBMISSION_FILE: &str = "submission.csv";

/// The outcome of grading one submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    /// The submission's file name (the summary starts with it).
    pub file: String,
    pub valid: bool,
    /// The task's metric name, as its task info gives it.
    pub metric: String,
    /// The score, when valid.
    pub value: Option<f64>,
    /// Whether a larger value is better (false for a metric that is not supported).
    pub higher_is_better: bool,
    /// For the error metrics (lower is better): the same metric for a constant prediction, per target
    /// column and averaged like the value. The constant is the answer's mean for rmse and mcrmse, its median
    /// for mae, medae and smape, exp(mean ln(1 + y)) - 1 for rmsle, and the answer's class frequencies for
    /// log_loss: the best constant for each of these but medae and smape, where it is a good one. None for
    /// the other metrics.
    pub baseline: Option<f64>,
    /// Why the submission is invalid.
    pub reason: Option<String>,
    /// Data rows in the submission (0 when it was not read: unsupported metric, answer or submission
    /// unreadable).
    pub rows: usize,
}

impl Grade {
    /// One line for logs and the coach: `submission.csv valid: 80 rows, roc_auc = 0.8312 (higher is
    /// better)` or `submission.csv invalid: missing ids (3 of 80), e.g. 1045; ...`.
    pub fn summary(&self) -> String {
        match (self.valid, self.value) {
            (true, Some(v)) => {
                let direction = if self.higher_is_better { "higher" } else { "lower" };
                let baseline =
                    self.baseline.map(|b| format!("; a constant prediction scores {b:.4}")).unwrap_or_default();
                format!(
                    "{} valid: {} rows, {} = {v:.4} ({direction} is better{baseline})",
                    self.file, self.rows, self.metric
                )
            }
            _ => format!("{} invalid: {}", self.file, self.reason.as_deref().unwrap_or("no score")),
        }
    }

    /// The score mapped to [0, 1], 1 the best, for a rule coach; 0 when invalid.
    /// - accuracy, f1, f1_micro: the value.
    /// - roc_auc: (AUC - 0.5) / 0.5, so guessing scores 0.
    /// - normalized_gini, r2, pearson, spearman, qwk: the value (0 is chance or a constant prediction), at
    ///   least 0.
    /// - error metrics: 1 - min(1, value / baseline), so the baseline's constant or worse scores 0 (any
    ///   constant does, but for medae and smape) and a perfect prediction 1; when the baseline is 0 (a
    ///   constant answer), 1 for value 0, else 0.
    pub fn quality(&self) -> f64 {
        let (true, Some(v), Some(metric)) = (self.valid, self.value, Metric::parse(&self.metric)) else {
            return 0.0;
        };
        let q = match metric {
            Metric::RocAuc => (v - 0.5) / 0.5,
            m if m.higher_is_better() => v,
            _ => match self.baseline {
                Some(b) if b > 0.0 => 1.0 - v / b,
                Some(_) if v == 0.0 => 1.0,
                _ => 0.0,
            },
        };
        if q.is_nan() {
            0.0
        } else {
            q.clamp(0.0, 1.0)
        }
    }
}

/// Grades `submission` against `answer_dir/test_answer.csv` with the task's metric and columns.
pub fn grade_submission(submission: &Path, answer_dir: &Path, info: &TaskInfo) -> Grade {
    let file = submission.file_name().unwrap_or(submission.as_os_str()).to_string_lossy().into_owned();
    let mut grade = Grade {
        file,
        valid: false,
        metric: info.metric.clone(),
        value: None,
        higher_is_better: false,
        baseline: None,
        reason: None,
        rows: 0,
    };
    let Some(metric) = Metric::parse(&info.metric) else {
        grade.reason = Some(format!("metric `{}` is not supported", info.metric));
        return grade;
    };
    grade.higher_is_better = metric.higher_is_better();
    match score(submission, answer_dir, info, metric, &mut grade.rows) {
        Ok((value, baseline)) => {
            grade.valid = true;
            grade.value = Some(value);
            grade.baseline = baseline;
        }
        Err(reason) => grade.reason = Some(reason.replace(['\n', '\r'], " ")),
    }
    grade
}

/// A CSV file read whole, cells trimmed.
struct Table {
    header: Vec<String>,
    rows: Vec<csv::StringRecord>,
}

/// Reads `path`; `name` is how reasons call the file.
fn read_table(path: &Path, name: &str) -> Result<Table, String> {
    if !path.is_file() {
        return Err(format!("{name} not found"));
    }
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| format!("{name} cannot be opened: {e}"))?;
    let header: Vec<String> =
        reader.headers().map_err(|e| format!("{name} is not a readable CSV: {e}"))?.iter().map(String::from).collect();
    if header.iter().all(|h| h.is_empty()) {
        return Err(format!("{name} is empty (no header)"));
    }
    let rows = reader.records().collect::<Result<_, _>>().map_err(|e| format!("{name} is not a readable CSV: {e}"))?;
    Ok(Table { header, rows })
}

/// At most the first 8 of `items`, comma-separated.
fn list(items: &[String]) -> String {
    let more = if items.len() > 8 { format!(", ... ({} in all)", items.len()) } else { String::new() };
    items.iter().take(8).map(|s| s.as_str()).collect::<Vec<_>>().join(", ") + &more
}

/// A cell as a reason quotes it: at most 40 characters.
fn show(cell: &str) -> String {
    if cell.chars().count() > 40 {
        cell.chars().take(40).collect::<String>() + "..."
    } else {
        cell.to_string()
    }
}

/// Index of column `name` in `header`.
fn column(header: &[String], name: &str, role: &str, file: &str) -> Result<usize, String> {
    let hits: Vec<usize> = header.iter().enumerate().filter(|(_, h)| *h == name).map(|(i, _)| i).collect();
    match hits[..] {
        [i] => Ok(i),
        [] => Err(format!("{file} header lacks the {role} column `{name}` (header: {})", list(header))),
        _ => Err(format!("{file} header has the column `{name}` {} times", hits.len())),
    }
}

/// The comparison key of a cell (module docs): a plain decimal in canonical form, else the trimmed text.
fn key(cell: &str) -> String {
    let s = cell.trim();
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        return s.to_string();
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let magnitude = match (int.is_empty(), frac.is_empty()) {
        (true, true) => return "0".to_string(),
        (_, true) => int.to_string(),
        (true, false) => format!("0.{frac}"),
        (false, false) => format!("{int}.{frac}"),
    };
    if negative {
        format!("-{magnitude}")
    } else {
        magnitude
    }
}

/// The answer and the submission, row by row in the answer's order: ids, then each target's cells.
struct Joined<'a> {
    ids: Vec<&'a str>,
    truth: Vec<Vec<&'a str>>,
    pred: Vec<Vec<&'a str>>,
}

fn join<'a>(answer: &'a Table, sub: &'a Table, info: &TaskInfo, sub_name: &str) -> Result<Joined<'a>, String> {
    let id = info.id_column.as_str();
    let targets = info.targets();
    let a_id = column(&answer.header, id, "id", "answer file")?;
    let a_targets =
        targets.iter().map(|t| column(&answer.header, t, "target", "answer file")).collect::<Result<Vec<_>, _>>()?;
    let s_id = column(&sub.header, id, "id", sub_name)?;
    let s_targets =
        targets.iter().map(|t| column(&sub.header, t, "target", sub_name)).collect::<Result<Vec<_>, _>>()?;
    if answer.rows.is_empty() {
        return Err("answer file has no rows".into());
    }
    let cell = |row: &'a csv::StringRecord, i: usize| row.get(i).unwrap_or("");

    let mut answer_ids: HashMap<String, usize> = HashMap::new();
    for (r, row) in answer.rows.iter().enumerate() {
        if answer_ids.insert(key(cell(row, a_id)), r).is_some() {
            return Err(format!("answer file has the id {} twice", show(cell(row, a_id))));
        }
    }
    let mut sub_ids: HashMap<String, usize> = HashMap::new();
    for (r, row) in sub.rows.iter().enumerate() {
        let text = cell(row, s_id);
        if text.is_empty() {
            return Err(format!("empty id in data row {}", r + 1));
        }
        if let Some(first) = sub_ids.insert(key(text), r) {
            return Err(format!("duplicate id {} (data rows {} and {})", show(text), first + 1, r + 1));
        }
    }

    let missing: Vec<&str> =
        answer.rows.iter().map(|row| cell(row, a_id)).filter(|t| !sub_ids.contains_key(&key(t))).collect();
    let extra: Vec<&str> =
        sub.rows.iter().map(|row| cell(row, s_id)).filter(|t| !answer_ids.contains_key(&key(t))).collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut parts = Vec::new();
        if let Some(first) = missing.first() {
            parts.push(format!("missing ids ({} of {}), e.g. {}", missing.len(), answer.rows.len(), show(first)));
        }
        if let Some(first) = extra.first() {
            parts.push(format!("ids not in the test set ({}), e.g. {}", extra.len(), show(first)));
        }
        let counts = format!("the file has {} rows for {} test ids", sub.rows.len(), answer.rows.len());
        return Err(format!("{}; {counts}", parts.join("; ")));
    }

    let matched: Vec<&csv::StringRecord> =
        answer.rows.iter().map(|row| &sub.rows[sub_ids[&key(cell(row, a_id))]]).collect();
    Ok(Joined {
        ids: answer.rows.iter().map(|row| cell(row, a_id)).collect(),
        truth: a_targets.iter().map(|&c| answer.rows.iter().map(|row| cell(row, c)).collect()).collect(),
        pred: s_targets.iter().map(|&c| matched.iter().map(|row| cell(row, c)).collect()).collect(),
    })
}

/// What a numeric cell may hold.
#[derive(Clone, Copy, PartialEq)]
enum Domain {
    Any,
    NonNegative,
    Probability,
    Integer,
}

/// Where cells come from, for reasons: the answer file is named, the submission is implied.
const ANSWER: &str = "answer file: ";
const SUBMISSION: &str = "";

/// One column's cells as labels (comparison keys).
fn labels(cells: &[&str], ids: &[&str], column: &str, source: &str) -> Result<Vec<String>, String> {
    cells
        .iter()
        .zip(ids)
        .map(|(c, id)| {
            if c.is_empty() {
                Err(format!("{source}empty value in column `{column}` for id {}", show(id)))
            } else {
                Ok(key(c))
            }
        })
        .collect()
}

/// One column's cells as numbers within `domain`.
fn numbers(
    cells: &[&str],
    ids: &[&str],
    column: &str,
    domain: Domain,
    metric: Metric,
    source: &str,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(cells.len());
    for (c, id) in cells.iter().zip(ids) {
        let at = format!("in column `{column}` for id {}", show(id));
        if c.is_empty() {
            return Err(format!("{source}empty value {at}"));
        }
        let v: f64 = c.parse().map_err(|_| format!("{source}unparsable value `{}` {at}", show(c)))?;
        if !v.is_finite() {
            return Err(format!("{source}non-finite value `{}` {at}", show(c)));
        }
        let (inside, needs) = match domain {
            Domain::Any => (true, ""),
            Domain::NonNegative => (v >= 0.0, ">= 0"),
            Domain::Probability => ((0.0..=1.0).contains(&v), "a probability in [0, 1]"),
            Domain::Integer => (v.fract() == 0.0, "an integer rating"),
        };
        if !inside {
            return Err(format!("{source}value {} {at} is outside {}'s domain ({needs})", show(c), metric.name()));
        }
        out.push(v);
    }
    Ok(out)
}

/// The positive class of a binary answer column (module docs).
fn positive_class(truth: &[String], column: &str, metric: Metric) -> Result<String, String> {
    let mut classes: Vec<&String> = truth.iter().collect();
    classes.sort();
    classes.dedup();
    let [a, b] = classes[..] else {
        let names: Vec<String> = classes.iter().map(|c| show(c)).collect();
        return Err(format!(
            "{ANSWER}{} needs two classes in column `{column}`, found {}: {}",
            metric.name(),
            classes.len(),
            list(&names)
        ));
    };
    // Sorted as strings, so `b` is the larger unless both are numbers and `a` is larger by value.
    let larger = match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) if x.is_finite() && y.is_finite() && x > y => a,
        _ => b,
    };
    Ok(larger.clone())
}

fn score(
    submission: &Path,
    answer_dir: &Path,
    info: &TaskInfo,
    metric: Metric,
    rows: &mut usize,
) -> Result<(f64, Option<f64>), String> {
    let targets = info.targets();
    if metric.columns() == Columns::One && targets.len() > 1 {
        return Err(format!(
            "metric `{}` with {} target columns is not supported (it scores one column)",
            metric.name(),
            targets.len()
        ));
    }
    let answer_path = answer_dir.join(ANSWER_FILE);
    let answer = read_table(&answer_path, &format!("answer file {}", answer_path.display()))?;
    let sub_name = submission.file_name().unwrap_or(submission.as_os_str()).to_string_lossy().into_owned();
    let sub = read_table(submission, &sub_name)?;
    *rows = sub.rows.len();
    let joined = join(&answer, &sub, info, &sub_name)?;
    let (value, baseline) = match metric.columns() {
        Columns::Classes if targets.len() > 1 => multiclass_log_loss(&joined, targets)?,
        _ => {
            let scored = targets
                .iter()
                .enumerate()
                .map(|(c, name)| score_column(metric, &joined.truth[c], &joined.pred[c], &joined.ids, name))
                .collect::<Result<Vec<_>, _>>()?;
            let n = scored.len() as f64;
            let value = scored.iter().map(|s| s.0).sum::<f64>() / n;
            let baseline = scored.iter().map(|s| s.1).sum::<Option<f64>>().map(|b| b / n);
            (value, baseline)
        }
    };
    if !value.is_finite() {
        return Err(format!("the {} of these values is not a finite number (values too large?)", metric.name()));
    }
    Ok((value, baseline))
}

/// One target column's value and baseline ([`Grade::baseline`]).
fn score_column(
    metric: Metric,
    truth: &[&str],
    pred: &[&str],
    ids: &[&str],
    column: &str,
) -> Result<(f64, Option<f64>), String> {
    let truth_numbers = |domain| numbers(truth, ids, column, domain, metric, ANSWER);
    let pred_numbers = |domain| numbers(pred, ids, column, domain, metric, SUBMISSION);
    let binary_truth = || -> Result<Vec<bool>, String> {
        let t = labels(truth, ids, column, ANSWER)?;
        let positive = positive_class(&t, column, metric)?;
        Ok(t.iter().map(|l| *l == positive).collect())
    };
    let constant = |y: &[f64], c: f64| vec![c; y.len()];
    let two_classes = || format!("{ANSWER}{} needs both classes in column `{column}`", metric.name());
    Ok(match metric {
        Metric::Accuracy | Metric::F1Micro => {
            (metrics::accuracy(&labels(truth, ids, column, ANSWER)?, &labels(pred, ids, column, SUBMISSION)?), None)
        }
        Metric::F1 => {
            let t = labels(truth, ids, column, ANSWER)?;
            let positive = positive_class(&t, column, metric)?;
            let p = labels(pred, ids, column, SUBMISSION)?;
            let is_positive = |l: &[String]| l.iter().map(|x| *x == positive).collect::<Vec<_>>();
            (metrics::f1(&is_positive(&t), &is_positive(&p)), None)
        }
        Metric::RocAuc => {
            let t = binary_truth()?;
            (metrics::roc_auc(&t, &pred_numbers(Domain::Probability)?).ok_or_else(two_classes)?, None)
        }
        Metric::NormalizedGini => {
            let t = binary_truth()?;
            (metrics::normalized_gini(&t, &pred_numbers(Domain::Any)?).ok_or_else(two_classes)?, None)
        }
        Metric::LogLoss => {
            let t: Vec<usize> = binary_truth()?.into_iter().map(usize::from).collect();
            let p = pred_numbers(Domain::Probability)?;
            let rows: Vec<Vec<f64>> = p.iter().map(|&q| vec![1.0 - q, q]).collect();
            let rate = t.iter().sum::<usize>() as f64 / t.len() as f64;
            let base = metrics::log_loss(&t, &vec![vec![1.0 - rate, rate]; t.len()]);
            (metrics::log_loss(&t, &rows), Some(base))
        }
        Metric::Rmse | Metric::Mcrmse => {
            let y = truth_numbers(Domain::Any)?;
            let base = metrics::rmse(&y, &constant(&y, y.iter().sum::<f64>() / y.len() as f64));
            (metrics::rmse(&y, &pred_numbers(Domain::Any)?), Some(base))
        }
        Metric::Rmsle => {
            let y = truth_numbers(Domain::NonNegative)?;
            let c = (y.iter().map(|v| v.ln_1p()).sum::<f64>() / y.len() as f64).exp_m1();
            (metrics::rmsle(&y, &pred_numbers(Domain::NonNegative)?), Some(metrics::rmsle(&y, &constant(&y, c))))
        }
        Metric::Mae | Metric::Medae | Metric::Smape => {
            let f: fn(&[f64], &[f64]) -> f64 = match metric {
                Metric::Mae => metrics::mae,
                Metric::Medae => metrics::medae,
                _ => metrics::smape,
            };
            let y = truth_numbers(Domain::Any)?;
            let base = f(&y, &constant(&y, metrics::median(&y)));
            (f(&y, &pred_numbers(Domain::Any)?), Some(base))
        }
        Metric::R2 => (metrics::r2(&truth_numbers(Domain::Any)?, &pred_numbers(Domain::Any)?), None),
        Metric::Pearson => (metrics::pearson(&truth_numbers(Domain::Any)?, &pred_numbers(Domain::Any)?), None),
        Metric::Spearman => (metrics::spearman(&truth_numbers(Domain::Any)?, &pred_numbers(Domain::Any)?), None),
        Metric::Qwk => (metrics::qwk(&truth_numbers(Domain::Integer)?, &pred_numbers(Domain::Integer)?), None),
    })
}

/// Multi-class log loss: the answer's target columns are one-hot classes, the submission's the probabilities.
fn multiclass_log_loss(joined: &Joined, targets: &[String]) -> Result<(f64, Option<f64>), String> {
    let metric = Metric::LogLoss;
    let ids = &joined.ids;
    let truth = (0..targets.len())
        .map(|c| numbers(&joined.truth[c], ids, &targets[c], Domain::Any, metric, ANSWER))
        .collect::<Result<Vec<_>, _>>()?;
    let pred = (0..targets.len())
        .map(|c| numbers(&joined.pred[c], ids, &targets[c], Domain::Probability, metric, SUBMISSION))
        .collect::<Result<Vec<_>, _>>()?;
    let mut classes = Vec::with_capacity(ids.len());
    for (r, id) in ids.iter().enumerate() {
        let row: Vec<f64> = truth.iter().map(|col| col[r]).collect();
        let ones: Vec<usize> = (0..row.len()).filter(|&c| row[c] == 1.0).collect();
        match ones[..] {
            [class] if row.iter().all(|&v| v == 0.0 || v == 1.0) => classes.push(class),
            _ => return Err(format!("{ANSWER}the row for id {} is not one-hot over {}", show(id), list(targets))),
        }
    }
    let rows: Vec<Vec<f64>> = (0..ids.len()).map(|r| pred.iter().map(|col| col[r]).collect()).collect();
    let n = ids.len() as f64;
    let freq: Vec<f64> = (0..targets.len()).map(|c| classes.iter().filter(|&&k| k == c).count() as f64 / n).collect();
    let base = metrics::log_loss(&classes, &vec![freq; ids.len()]);
    Ok((metrics::log_loss(&classes, &rows), Some(base)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsbench::info::TargetColumn;

    fn info(metric: &str, targets: &[&str]) -> TaskInfo {
        let target_column = match targets {
            [one] => TargetColumn::One(one.to_string()),
            _ => TargetColumn::Many(targets.iter().map(|t| t.to_string()).collect()),
        };
        TaskInfo {
            cleaned_prompt: String::new(),
            metric: metric.into(),
            task_type: String::new(),
            target_column,
            id_column: "id".into(),
        }
    }

    /// Grades `submission` (None: no file) against `answer` with `metric` over `targets`.
    fn grade_with(metric: &str, targets: &[&str], answer: &str, submission: Option<&str>) -> Grade {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ANSWER_FILE), answer).unwrap();
        let sub = dir.path().join("submission.csv");
        if let Some(text) = submission {
            std::fs::write(&sub, text).unwrap();
        }
        grade_submission(&sub, dir.path(), &info(metric, targets))
    }

    fn grade(metric: &str, answer: &str, submission: &str) -> Grade {
        grade_with(metric, &["y"], answer, Some(submission))
    }

    fn value(g: &Grade) -> f64 {
        assert!(g.valid, "{}", g.summary());
        g.value.unwrap()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    fn reason(g: &Grade) -> String {
        assert!(!g.valid && g.value.is_none(), "{}", g.summary());
        g.reason.clone().unwrap()
    }

    const BINARY: &str = "id,y\n1,0\n2,1\n3,0\n4,1\n";
    const NUMBERS: &str = "id,y\n1,1\n2,2\n3,3\n";

    #[test]
    fn rows_join_by_id() {
        // The AUC case of the metrics tests, rows shuffled: 0.75 all the same.
        let g = grade("roc_auc", BINARY, "id,y\n4,0.8\n2,0.3\n1,0.1\n3,0.35\n");
        close(value(&g), 0.75);
        assert_eq!(g.rows, 4);
        // Ids and labels compare by value when they are plain decimals; spaces and extra columns don't matter.
        let g = grade("accuracy", BINARY, " id , y ,extra\n1.0, 0.0,a\n+2,1,b\n03,1,c\n4,1.00,d\n");
        close(value(&g), 0.75);
        // A byte-order mark before the header is not part of the id column's name.
        close(value(&grade("accuracy", BINARY, "\u{feff}id,y\n1,0\n2,1\n3,0\n4,1\n")), 1.0);
        assert_eq!(key("-0.00"), "0");
        assert_eq!(key("007.50"), "7.5");
        assert_eq!(key("-.5"), "-0.5");
        assert_eq!(key("1e0"), "1e0");
        assert_eq!(key(" True "), "True");
        assert_eq!(key("."), ".");
    }

    #[test]
    fn every_metric_through_the_grader() {
        let labels = "id,y\n1,cat\n2,dog\n3,cat\n4,bird\n";
        close(value(&grade("accuracy", labels, "id,y\n1,cat\n2,cat\n3,cat\n4,bird\n")), 0.75);
        close(value(&grade("f1_micro", labels, "id,y\n1,cat\n2,cat\n3,cat\n4,bird\n")), 0.75);
        // Positive class True (True > False): TP 1 (id 2), FP 1 (id 3), FN 1 (id 4): 2 / 4. A label that is
        // not True (id 1's `maybe`) is a negative prediction.
        let tf = "id,y\n1,False\n2,True\n3,False\n4,True\n";
        close(value(&grade("f1", tf, "id,y\n1,maybe\n2,True\n3,True\n4,False\n")), 0.5);
        // Numeric classes: 10 is positive over 9 (by value, though "10" < "9" as strings).
        close(value(&grade("f1", "id,y\n1,9\n2,10\n", "id,y\n1,9\n2,10\n")), 1.0);
        close(value(&grade("f1", "id,y\n1,9\n2,10\n", "id,y\n1,10\n2,9\n")), 0.0);
        close(value(&grade("normalized_gini", BINARY, "id,y\n1,-3\n2,7\n3,12\n4,80\n")), 0.5);
        let g = grade("log_loss", "id,y\n1,1\n2,0\n", "id,y\n1,0.8\n2,0.4\n");
        close(value(&g), 0.3669845875401002);
        close(g.baseline.unwrap(), std::f64::consts::LN_2); // rate 0.5: -ln 0.5
        let g = grade("rmse", NUMBERS, "id,y\n1,1\n2,2\n3,5\n");
        close(value(&g), 1.1547005383792515);
        close(g.baseline.unwrap(), (2.0f64 / 3.0).sqrt()); // mean 2: errors 1, 0, 1
        close(value(&grade("mcrmse", NUMBERS, "id,y\n1,1\n2,2\n3,5\n")), 1.1547005383792515);
        let g = grade("rmsle", "id,y\n1,1\n2,0\n", "id,y\n1,2\n2,0\n");
        close(value(&g), 0.28670712747781973);
        // Constant exp((ln 2 + ln 1) / 2) - 1 = sqrt 2 - 1: log errors ln 2 / 2 each way.
        close(g.baseline.unwrap(), std::f64::consts::LN_2 / 2.0);
        let four = "id,y\n1,1\n2,2\n3,3\n4,4\n";
        let g = grade("mae", four, "id,y\n1,2\n2,2\n3,1\n4,4\n");
        close(value(&g), 0.75);
        close(g.baseline.unwrap(), 1.0); // median 2.5: errors 1.5, .5, .5, 1.5
        close(value(&grade("medae", four, "id,y\n1,2\n2,2\n3,1\n4,4\n")), 0.5);
        close(value(&grade("r2", NUMBERS, "id,y\n1,1\n2,2\n3,2\n")), 0.5);
        let g = grade("smape", "id,y\n1,100\n2,0\n3,50\n", "id,y\n1,110\n2,0\n3,0\n");
        close(value(&g), 69.84126984126985);
        close(g.baseline.unwrap(), 100.0 * (50.0 / 75.0 + 2.0 + 0.0) / 3.0); // median 50: 50/75, 50/25, 0
        close(value(&grade("pearson", NUMBERS, "id,y\n1,2\n2,4\n3,7\n")), 0.9933992677987828);
        close(value(&grade("spearman", four, "id,y\n1,10\n2,30\n3,20\n4,40\n")), 0.8);
        close(value(&grade("quadratic_weighted_kappa", NUMBERS, "id,y\n1,1\n2,2\n3,2.0\n")), 2.0 / 3.0);
        close(value(&grade("qwk", NUMBERS, "id,y\n1,1\n2,2\n3,2\n")), 2.0 / 3.0);
    }

    #[test]
    fn several_targets() {
        // Mean column-wise RMSLE: column u as in the metrics tests, column v perfect.
        let answer = "id,u,v\n1,1,5\n2,0,6\n";
        let g = grade_with("rmsle", &["u", "v"], answer, Some("id,v,u\n2,6,0\n1,5,2\n"));
        close(value(&g), 0.28670712747781973 / 2.0);
        // mcrmse: column rmses sqrt(4/3) and 0.
        let answer = "id,a,b\n1,1,0\n2,2,0\n3,3,0\n";
        close(
            value(&grade_with("mcrmse", &["a", "b"], answer, Some("id,a,b\n1,1,0\n2,2,0\n3,5,0\n"))),
            1.1547005383792515 / 2.0,
        );
        // Multi-class log loss over one-hot columns: -(ln 0.7 + ln 0.6) / 2.
        let answer = "id,a,b,c\n1,1,0,0\n2,0,0,1\n";
        let g = grade_with("log_loss", &["a", "b", "c"], answer, Some("id,a,b,c\n1,0.7,0.2,0.1\n2,0.2,0.2,0.6\n"));
        close(value(&g), 0.4337502838523616);
        close(g.baseline.unwrap(), std::f64::consts::LN_2); // frequencies 1/2, 0, 1/2
        let g = grade_with("log_loss", &["a", "b", "c"], "id,a,b,c\n1,1,1,0\n", Some("id,a,b,c\n1,0.5,0.5,0\n"));
        assert_eq!(reason(&g), "answer file: the row for id 1 is not one-hot over a, b, c");
        let g = grade_with("accuracy", &["a", "b"], "id,a,b\n1,x,y\n", Some("id,a,b\n1,x,y\n"));
        assert_eq!(reason(&g), "metric `accuracy` with 2 target columns is not supported (it scores one column)");
    }

    #[test]
    fn every_invalid_reason() {
        let g = grade_with("rmse", &["y"], NUMBERS, None);
        assert_eq!(reason(&g), "submission.csv not found");
        assert_eq!(g.summary(), "submission.csv invalid: submission.csv not found");
        assert_eq!(reason(&grade("rmse", NUMBERS, "")), "submission.csv is empty (no header)");
        let ragged = reason(&grade("rmse", NUMBERS, "id,y\n1,1\n2\n3,3\n"));
        assert!(ragged.starts_with("submission.csv is not a readable CSV: ") && ragged.contains("field"), "{ragged}");
        assert_eq!(
            reason(&grade("rmse", NUMBERS, "ID,y\n1,1\n2,2\n3,3\n")),
            "submission.csv header lacks the id column `id` (header: ID, y)"
        );
        assert_eq!(
            reason(&grade("rmse", NUMBERS, "id,prediction\n1,1\n2,2\n3,3\n")),
            "submission.csv header lacks the target column `y` (header: id, prediction)"
        );
        assert_eq!(
            reason(&grade("rmse", NUMBERS, "id,y,y\n1,1,1\n")),
            "submission.csv header has the column `y` 2 times"
        );
        assert_eq!(reason(&grade("rmse", NUMBERS, "id,y\n1,1\n2,2\n1.0,3\n")), "duplicate id 1.0 (data rows 1 and 3)");
        assert_eq!(reason(&grade("rmse", NUMBERS, "id,y\n1,1\n,2\n3,3\n")), "empty id in data row 2");
        let g = grade("rmse", NUMBERS, "id,y\n1,1\n3,3\n");
        assert_eq!(reason(&g), "missing ids (1 of 3), e.g. 2; the file has 2 rows for 3 test ids");
        assert_eq!(g.rows, 2);
        assert_eq!(
            reason(&grade("rmse", NUMBERS, "id,y\n1,1\n2,2\n3,3\n9,9\n")),
            "ids not in the test set (1), e.g. 9; the file has 4 rows for 3 test ids"
        );
        assert_eq!(
            reason(&grade("rmse", NUMBERS, "id,y\n1,1\n2,2\n4,3\n")),
            "missing ids (1 of 3), e.g. 3; ids not in the test set (1), e.g. 4; the file has 3 rows for 3 test ids"
        );
        assert_eq!(
            reason(&grade("rmse", NUMBERS, "id,y\n1,1\n2,abc\n3,3\n")),
            "unparsable value `abc` in column `y` for id 2"
        );
        assert_eq!(reason(&grade("rmse", NUMBERS, "id,y\n1,1\n2,\n3,3\n")), "empty value in column `y` for id 2");
        assert_eq!(reason(&grade("accuracy", NUMBERS, "id,y\n1,1\n2,\n3,3\n")), "empty value in column `y` for id 2");
        assert_eq!(
            reason(&grade("rmse", NUMBERS, "id,y\n1,1\n2,NaN\n3,3\n")),
            "non-finite value `NaN` in column `y` for id 2"
        );
        assert_eq!(
            reason(&grade("mae", NUMBERS, "id,y\n1,1\n2,inf\n3,3\n")),
            "non-finite value `inf` in column `y` for id 2"
        );
        assert_eq!(
            reason(&grade("rmsle", NUMBERS, "id,y\n1,1\n2,-0.5\n3,3\n")),
            "value -0.5 in column `y` for id 2 is outside rmsle's domain (>= 0)"
        );
        assert_eq!(
            reason(&grade("roc_auc", BINARY, "id,y\n1,0\n2,1.2\n3,0\n4,1\n")),
            "value 1.2 in column `y` for id 2 is outside roc_auc's domain (a probability in [0, 1])"
        );
        assert_eq!(
            reason(&grade("log_loss", BINARY, "id,y\n1,-0.1\n2,1\n3,0\n4,1\n")),
            "value -0.1 in column `y` for id 1 is outside log_loss's domain (a probability in [0, 1])"
        );
        assert_eq!(
            reason(&grade("qwk", NUMBERS, "id,y\n1,1\n2,2.5\n3,3\n")),
            "value 2.5 in column `y` for id 2 is outside quadratic_weighted_kappa's domain (an integer rating)"
        );
        assert_eq!(
            reason(&grade("rmse", NUMBERS, "id,y\n1,1e308\n2,-1e308\n3,3\n")),
            "the rmse of these values is not a finite number (values too large?)"
        );
        let g = grade("map_at_3", NUMBERS, "id,y\n1,1\n");
        assert_eq!(reason(&g), "metric `map_at_3` is not supported");
        assert_eq!(g.summary(), "submission.csv invalid: metric `map_at_3` is not supported");
        assert_eq!(reason(&grade("jaccard", NUMBERS, "id,y\n1,1\n")), "metric `jaccard` is not supported");
    }

    #[test]
    fn answer_file_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("submission.csv");
        std::fs::write(&sub, "id,y\n1,1\n").unwrap();
        let g = grade_submission(&sub, &dir.path().join("answers"), &info("rmse", &["y"]));
        assert_eq!(
            reason(&g),
            format!("answer file {} not found", dir.path().join("answers").join(ANSWER_FILE).display())
        );
        assert_eq!(
            reason(&grade("rmse", "id,target\n1,1\n", "id,y\n1,1\n")),
            "answer file header lacks the target column `y` (header: id, target)"
        );
        assert_eq!(reason(&grade("rmse", "id,y\n", "id,y\n")), "answer file has no rows");
        assert_eq!(reason(&grade("rmse", "id,y\n1,1\n1,2\n", "id,y\n1,1\n")), "answer file has the id 1 twice");
        assert_eq!(
            reason(&grade("roc_auc", "id,y\n1,1\n2,1\n", "id,y\n1,0.5\n2,0.5\n")),
            "answer file: roc_auc needs two classes in column `y`, found 1: 1"
        );
        assert_eq!(
            reason(&grade("f1", "id,y\n1,a\n2,b\n3,c\n", "id,y\n1,a\n2,b\n3,c\n")),
            "answer file: f1 needs two classes in column `y`, found 3: a, b, c"
        );
        assert_eq!(
            reason(&grade("rmsle", "id,y\n1,-1\n", "id,y\n1,1\n")),
            "answer file: value -1 in column `y` for id 1 is outside rmsle's domain (>= 0)"
        );
    }

    #[test]
    fn summary_and_quality() {
        let g = grade("roc_auc", BINARY, "id,y\n4,0.8\n2,0.3\n1,0.1\n3,0.35\n");
        assert_eq!(g.summary(), "submission.csv valid: 4 rows, roc_auc = 0.7500 (higher is better)");
        close(g.quality(), 0.5);
        let g = grade("rmse", NUMBERS, "id,y\n1,1\n2,2\n3,2\n");
        // rmse sqrt(1/3) against the mean's sqrt(2/3): 1 - sqrt(1/2).
        assert_eq!(
            g.summary(),
            "submission.csv valid: 3 rows, rmse = 0.5774 (lower is better; a constant prediction scores 0.8165)"
        );
        close(g.quality(), 1.0 - 0.5f64.sqrt());
        close(grade("rmse", NUMBERS, "id,y\n1,1\n2,2\n3,3\n").quality(), 1.0);
        assert_eq!(grade("rmse", NUMBERS, "id,y\n1,2\n2,2\n3,2\n").quality(), 0.0);
        assert_eq!(grade("rmse", NUMBERS, "id,y\n1,9\n2,9\n3,9\n").quality(), 0.0);
        // A constant answer: baseline 0, so only a perfect submission has quality.
        let flat = "id,y\n1,4\n2,4\n";
        assert_eq!(grade("mae", flat, "id,y\n1,4\n2,4\n").quality(), 1.0);
        assert_eq!(grade("mae", flat, "id,y\n1,4\n2,5\n").quality(), 0.0);
        close(grade("accuracy", BINARY, "id,y\n1,0\n2,1\n3,1\n4,1\n").quality(), 0.75);
        assert_eq!(grade("roc_auc", BINARY, "id,y\n1,0.9\n2,0.1\n3,0.8\n4,0.2\n").quality(), 0.0);
        close(grade("r2", NUMBERS, "id,y\n1,1\n2,2\n3,2\n").quality(), 0.5);
        assert_eq!(grade("pearson", NUMBERS, "id,y\n1,3\n2,2\n3,1\n").quality(), 0.0);
        assert_eq!(grade("rmse", NUMBERS, "id,y\n1,x\n").quality(), 0.0);
        assert_eq!(grade("map_at_3", NUMBERS, "id,y\n1,1\n").quality(), 0.0);
    }
}
