//! The DSBench task-definition formats MAPPA ships (shared/data/dsbench): a task record of the JSON Lines
//! task files, and the cleaned-prompts file that gives each task's metric and columns.
//!
//! A record's paths (`train_file`, `test_file`, `answer_dir`) are relative to `data.files_root`; the answer
//! directory holds `test_answer.csv` with the id column and the target column(s) for every test row.
//! `target_column` is one name or, for multi-target tasks, a list of names.
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One entry of the cleaned-prompts file (keyed by task id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub cleaned_prompt: String,
    /// The metric's name (`roc_auc`, `rmsle`, ...; `dsbench::metrics::Metric::parse`).
    pub metric: String,
    /// `classification`, `regression` (or `extraction`, which the grader does not score).
    pub task_type: String,
    pub target_column: TargetColumn,
    pub id_column: String,
}

/// One target column, or several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetColumn {
    One(String),
    Many(Vec<String>),
}

impl TaskInfo {
    /// The target columns, in the file's order.
    pub fn targets(&self) -> &[String] {
        match &self.target_column {
            TargetColumn::One(name) => std::slice::from_ref(name),
            TargetColumn::Many(names) => names,
        }
    }
}

/// One line of a task file: the task text, no inline answer, and where its files are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub prompt: String,
    pub answer: Option<String>,
    pub metadata: TaskMeta,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMeta {
    pub task_id: String,
    /// Always `data_modeling` here.
    pub task_type: String,
    /// `classification` or `regression`.
    pub data_type: String,
    /// `./data/DSBench/data/data_resplit/<task_id>/train.csv`
    pub train_file: String,
    /// `./data/DSBench/data/data_resplit/<task_id>/test.csv`
    pub test_file: String,
    /// `./data/DSBench/data/answers/<task_id>`
    pub answer_dir: String,
    pub url: String,
}

/// Every task of a cleaned-prompts file, by task id; an entry without an id column or a target column is an
/// error naming the file and the task.
pub fn load_task_infos(path: &Path) -> Result<BTreeMap<String, TaskInfo>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading task info file {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let serde_json::Value::Object(entries) = value else {
        bail!("{}: expected one JSON object keyed by task id", path.display());
    };
    let mut infos = BTreeMap::new();
    for (task, entry) in entries {
        let info: TaskInfo =
            serde_json::from_value(entry).with_context(|| format!("{}: task `{task}`", path.display()))?;
        ensure!(!info.id_column.trim().is_empty(), "{}: task `{task}` has an empty id_column", path.display());
        ensure!(
            !info.targets().is_empty() && info.targets().iter().all(|t| !t.trim().is_empty()),
            "{}: task `{task}` has an empty target_column",
            path.display()
        );
        infos.insert(task, info);
    }
    Ok(infos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<BTreeMap<String, TaskInfo>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("info.json");
        std::fs::write(&path, text).unwrap();
        load_task_infos(&path)
    }

    #[test]
    fn one_or_many_targets() {
        let infos = load(
            r#"{"a": {"cleaned_prompt": "p", "metric": "rmse", "task_type": "regression", "target_column": "y",
                     "id_column": "id"},
                "b": {"cleaned_prompt": "q", "metric": "mcrmse", "task_type": "regression",
                      "target_column": ["u", "v"], "id_column": "text_id"}}"#,
        )
        .unwrap();
        assert_eq!(infos["a"].targets(), ["y"]);
        assert_eq!(infos["b"].targets(), ["u", "v"]);
        assert_eq!(infos["b"].id_column, "text_id");
        // Written back, one target stays a string.
        assert!(serde_json::to_string(&infos["a"]).unwrap().contains(r#""target_column":"y""#));
    }

    #[test]
    fn errors_name_the_file_and_task() {
        let err = |text: &str| format!("{:#}", load(text).unwrap_err());
        assert!(err("[1, 2]").contains("expected one JSON object keyed by task id"));
        assert!(err("{").contains("not valid JSON"));
        let missing = err(r#"{"t1": {"cleaned_prompt": "p", "metric": "rmse", "task_type": "regression"}}"#);
        assert!(missing.contains("task `t1`") && missing.contains("target_column"), "{missing}");
        let empty =
            err(r#"{"t2": {"cleaned_prompt": "p", "metric": "rmse", "task_type": "regression", "target_column": [],
                       "id_column": "id"}}"#);
        assert!(empty.contains("task `t2` has an empty target_column"), "{empty}");
        let no_file = format!("{:#}", load_task_infos(Path::new("/nonexistent/info.json")).unwrap_err());
        assert!(no_file.contains("reading task info file /nonexistent/info.json"), "{no_file}");
    }
}
