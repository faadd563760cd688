//! The DSBench pipeline end to end, offline: generated tabular tasks staged into each episode's shared working
//! directory, three scripted agents (Data Engineer, Modeler, Analyst) whose Python runs in the sandbox with the
//! pinned data-science environment tools/setup.sh installs, the submission graded with each task's metric, and
//! the rule-based artifacts coach scoring every action; then `mappa train --config dsbench-quick` itself with
//! SmolLM2 agents, made smaller.
mod common;
use common::scripted::Scripted;
use mappa::coach::{Coach, CoachOutcome, CoachPrompt, OtherAgents, RuleCoach};
use mappa::data::load_tasks;
use mappa::rollout::{coach_request, run_episodes, Episode, Generator, Phase};
use mappa::run::Run;
use mappa::run_config::{RunConfig, WorkdirScope};
use serde_json::Value;
use std::path::Path;

const DATA_ENGINEER: &str = r#"I will prepare the features.
```python
import pandas as pd
tr, te = pd.read_csv("train.csv"), pd.read_csv("test.csv")
idc = te.columns[0]
target = [c for c in tr.columns if c not in te.columns][0]
X = pd.get_dummies(tr.drop(columns=[target, idc]), dtype=float)
Xt = pd.get_dummies(te.drop(columns=[idc]), dtype=float).reindex(columns=X.columns, fill_value=0.0)
med = X.median()
X.fillna(med).to_pickle("X_train.pkl"); tr[target].to_pickle("y_train.pkl"); Xt.fillna(med).to_pickle("X_test.pkl")
print("---PREPROCESSING_SUMMARY---", X.shape)
```<|im_end|>"#;

const MODELER: &str = r#"A random forest.
```python
import pandas as pd, pickle
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
X, y = pd.read_pickle("X_train.pkl"), pd.read_pickle("y_train.pkl")
numeric = y.dtype.kind in "if" and y.nunique() > 10
model = (RandomForestRegressor if numeric else RandomForestClassifier)(n_estimators=40, random_state=0).fit(X, y)
pickle.dump(model, open("model.pkl", "wb"))
print("---MODEL_SUMMARY---", type(model).__name__)
```<|im_end|>"#;

/// The Analyst's submission: probabilities for a 0/1 target, else labels or values.
fn analyst(id_column: &str) -> String {
    format!(
        r#"Predicting.
```python
import pandas as pd, pickle
tr, te = pd.read_csv("train.csv"), pd.read_csv("test.csv")
target = [c for c in tr.columns if c not in te.columns][0]
model, Xt = pickle.load(open("model.pkl", "rb")), pd.read_pickle("X_test.pkl")
pred = model.predict(Xt)
if hasattr(model, "predict_proba") and sorted(map(str, model.classes_)) == ["0", "1"]:
    pred = model.predict_proba(Xt)[:, 1]
pd.DataFrame({{"{id_column}": te[te.columns[0]], target: pred}}).to_csv("submission.csv", index=False)
print("rows", len(pred))
```<|im_end|>"#
    )
}

/// The DSBench preset on `n` generated tasks (one of each of the first `n` kinds) in `dir`.
fn setup(dir: &Path, n: usize) -> (RunConfig, Vec<mappa::data::Task>) {
    let synth = mappa::dsbench::TabularConfig { train_tasks: n, eval_tasks: 1, ..Default::default() };
    let written = mappa::dsbench::write_tasks(&synth, dir).unwrap();
    let mut cfg = Run::preset("dsbench").unwrap();
    let python = mappa::loader::setup_home().unwrap().join(mappa::loader::PY_DS);
    assert!(python.is_file(), "{} is missing: tools/setup.sh installs it", python.display());
    assert_eq!(cfg.sandbox.python, python, "the preset runs the tool with the data-science environment");
    (cfg.data.train, cfg.data.task_info, cfg.data.files_root) = (written.train, Some(written.info), written.files_root);
    cfg.data.eval = vec![written.eval];
    cfg.rl.max_new_tokens = 4096;
    cfg.agents.iter_mut().for_each(|a| a.max_actions = 1); // one scripted action each
    let tasks = load_tasks(&cfg.data.train, &cfg.data).unwrap();
    (cfg, tasks)
}

fn rollout(cfg: &RunConfig, tasks: &[mappa::data::Task], agents: &[Scripted; 3], root: &Path) -> Vec<Episode> {
    let engines: Vec<&dyn Generator> = agents.iter().map(|a| a as &dyn Generator).collect();
    let indexed: Vec<(usize, &mappa::data::Task)> = tasks.iter().enumerate().collect();
    let toks = [common::chat_tokenizer(); 3];
    run_episodes(&engines, &toks, cfg, &indexed, 1, Phase::Eval, 3, root, &mut |_, _, _| Ok(())).unwrap()
}

fn rule_scores(cfg: &RunConfig, tasks: &[mappa::data::Task], ep: &Episode) -> Vec<f32> {
    let coach =
        Coach::new(RuleCoach::new("analyst", OtherAgents::Artifacts, false).unwrap(), CoachPrompt::default(), None);
    (0..ep.actions.len())
        .map(|a| {
            let req = coach_request(ep, a, cfg, common::chat_tokenizer(), &tasks[ep.task_index]).unwrap();
            match coach.score_action(&req) {
                CoachOutcome::Scored { score, .. } => score,
                CoachOutcome::Unscored { reason } => panic!("unscored: {reason}"),
            }
        })
        .collect()
}

#[test]
fn scripted_team_stages_the_csvs_passes_files_down_and_is_graded_by_each_tasks_metric() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, tasks) = setup(tmp.path(), 3);
    assert_eq!(cfg.sandbox.workdir, WorkdirScope::Episode);
    let metrics: Vec<&str> = tasks.iter().map(|t| t.info.as_ref().unwrap().metric.as_str()).collect();
    assert_eq!(metrics, ["roc_auc", "rmse", "accuracy"]);
    let ids: Vec<String> = tasks.iter().map(|t| t.info.as_ref().unwrap().id_column.clone()).collect();
    let analyst_ids = ids.clone();
    let agents =
        [Scripted::fixed(DATA_ENGINEER), Scripted::fixed(MODELER), Scripted::new(move |_, r| analyst(&analyst_ids[r]))];
    let eps = rollout(&cfg, &tasks, &agents, &tmp.path().join("work"));
    for ep in &eps {
        let name = &tasks[ep.task_index].id;
        let first_files = &ep.actions[0].files;
        assert!(first_files.contains(&"train.csv".to_string()) && first_files.contains(&"test.csv".to_string()));
        for a in &ep.actions {
            let out = a.tool_output.as_deref().unwrap();
            assert!(!out.contains("[tool error"), "{name}: agent {} failed: {out}", a.agent);
        }
        let grade = ep.submission.as_ref().unwrap();
        assert!(grade.valid, "{name}: {}", grade.summary());
        assert_eq!(ep.final_answer_correct, Some(true));
        assert!(grade.quality() > 0.3, "{name}: a random forest beats a constant clearly: {}", grade.summary());
        // The rule coach: every action ran and left its files; the Analyst's score follows the quality.
        let scores = rule_scores(&cfg, &tasks, ep);
        for (a, s) in ep.actions.iter().zip(&scores) {
            match a.agent {
                0 | 1 => assert_eq!(*s, 10.0, "{name}: agent {}", a.agent),
                _ => assert!((*s - (6.0 + 4.0 * grade.quality() as f32)).abs() < 1e-4, "{name}: {s}"),
            }
        }
        let req = coach_request(ep, ep.actions.len() - 1, &cfg, common::chat_tokenizer(), &tasks[ep.task_index]);
        assert_eq!(req.unwrap().ground_truth, Some(grade.summary()), "the coach sees the grade, not the answer path");
    }
    let summary = mappa::eval::summarize("synthetic", 0, &cfg, &eps, None).unwrap();
    assert_eq!(summary.avg_at_k, 1.0, "every submission is valid: the success rate");
    assert!(summary.submission_quality.unwrap().0 > 0.3);
}

#[test]
fn a_malformed_submission_is_a_graded_failure_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, tasks) = setup(tmp.path(), 1);
    let agents =
        [Scripted::fixed(DATA_ENGINEER), Scripted::fixed(MODELER), Scripted::new(|_, _| analyst("not_the_id_column"))];
    let eps = rollout(&cfg, &tasks, &agents, &tmp.path().join("work"));
    let grade = eps[0].submission.as_ref().unwrap();
    assert!(!grade.valid);
    assert!(grade.summary().contains("invalid") && grade.summary().contains("id"), "{}", grade.summary());
    assert_eq!(eps[0].final_answer_correct, Some(false));
    let scores = rule_scores(&cfg, &tasks, &eps[0]);
    assert_eq!(*scores.last().unwrap(), 3.0, "the Analyst's code ran but left no valid submission");

    // No code at all: no submission, and a missing file is the reason.
    let silent = [Scripted::fixed(DATA_ENGINEER), Scripted::fixed(MODELER), Scripted::fixed("Done.<|im_end|>")];
    let eps = rollout(&cfg, &tasks, &silent, &tmp.path().join("work2"));
    let grade = eps[0].submission.as_ref().unwrap();
    assert!(!grade.valid && grade.summary().contains("submission.csv"), "{}", grade.summary());
    assert_eq!(*rule_scores(&cfg, &tasks, &eps[0]).last().unwrap(), 0.0, "text without code");
}

#[test]
fn missing_staged_files_and_a_missing_environment_fail_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cfg, _) = setup(tmp.path(), 1);
    cfg.run.base_model = Some(common::smollm2_gguf());
    cfg.run.dir = Some(tmp.path().join("run"));
    cfg.coach.backend = mappa::run_config::CoachBackend::Rule;
    cfg.coach.rule = mappa::run_config::RuleKind::Artifacts;
    let mut moved = cfg.clone();
    moved.data.files_root = tmp.path().join("elsewhere");
    let err = format!("{:#}", mappa::run::Run::open(mappa::run::Open::New(Box::new(moved))).err().unwrap());
    assert!(err.contains("staged or answer files are missing") && err.contains("train.csv"), "{err}");
    let mut bare = cfg.clone();
    bare.sandbox.python = "python3".into(); // the host's interpreter, without pandas
    let err = format!("{:#}", mappa::run::Run::open(mappa::run::Open::New(Box::new(bare))).err().unwrap());
    assert!(err.contains("sandbox.requires") && err.contains("setup.sh"), "{err}");
    assert!(!tmp.path().join("run").exists(), "nothing was written");
}

/// `mappa train --config dsbench-quick`, one step of one task x two samples with short replies: SmolLM2 rarely
/// writes a working pipeline, so what is checked is that everything runs and the eval is graded.
#[test]
fn dsbench_quick_runs_end_to_end_and_grades_its_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mappa"))
        .args(["train", "--config", "dsbench-quick"])
        .args(["--set", "run.steps=1", "--set", "rl.prompts_per_step=1", "--set", "rl.samples_per_optimizer_step=2"])
        .args(["--set", "rl.max_new_tokens=48", "--set", "rl.eval_every=1", "--set", "rl.checkpoint_every=1"])
        .args(["--set", "rl.eval_before_training=false"])
        .args(["--set", &format!("run.dir={:?}", dir.display().to_string())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let eval: Value =
        serde_json::from_str(std::fs::read_to_string(dir.join("eval.jsonl")).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(eval["problems"], 3);
    assert!(eval["submission_quality"].is_array(), "{eval}");
    let problems = std::fs::read_to_string(dir.join("eval_problems.jsonl")).unwrap();
    for line in problems.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()) {
        let grade = line["submissions"][0].as_str().unwrap();
        assert!(grade.starts_with("submission.csv "), "each eval episode's grade, with its reason: {grade}");
    }
    let log = std::fs::read_to_string(dir.join("coach_log.jsonl")).unwrap();
    assert!(log.contains("Rule-based check"), "the artifacts coach scored the actions");
    assert!(stderr.contains("rule-based artifacts coach"), "{stderr}");
}
