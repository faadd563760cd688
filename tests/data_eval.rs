//! Task data (`mappa::data`): JSONL loading and its errors, the holdout/train-sample split, the per-step
//! task sampler; and evaluation summaries (`mappa::eval`) on hand-made episodes with known numbers.
use mappa::data::{field, load_tasks, train_split, TaskSampler, HOLDOUT_NAME};
use mappa::engine::FinishReason;
use mappa::eval::summarize;
use mappa::rollout::{ActionRecord, Episode};
use mappa::run_config::{DataConfig, RunConfig};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const AIME: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/math/mappa_aime_1983_2024.jsonl");

fn data_cfg() -> DataConfig {
    RunConfig::preset("mathchat").unwrap().data
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn load_err(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "tasks.jsonl", text);
    let err = format!("{:#}", load_tasks(&p, &data_cfg()).unwrap_err());
    assert!(err.contains(&p.display().to_string()), "names the file: {err}");
    err
}

#[test]
fn loading_errors_name_file_and_line() {
    let ok = r#"{"id": "a", "problem": "p", "answer": "1"}"#;
    let err = load_err(&format!("{ok}\n\n{{\"id\": \"b\", \"problem\": \n"));
    assert!(err.contains("tasks.jsonl:3: invalid JSON"), "{err}");
    let err = load_err(&format!("{ok}\n{{\"id\": \"b\", \"answer\": \"2\"}}\n"));
    assert!(err.contains("tasks.jsonl:2: missing task field `problem`"), "{err}");
    let err = load_err(&format!("{ok}\n{ok}\n{{\"id\": \"c\", \"problem\": \"p\"}}\n"));
    assert!(err.contains("tasks.jsonl:2: duplicate task id `a` (first on line 1)"), "{err}");
    let err = load_err(r#"{"id": "c", "problem": "p"}"#);
    assert!(err.contains("tasks.jsonl:1: missing answer field (looked for answer)"), "{err}");
    let err = load_err(r#"{"id": "c", "problem": 5, "answer": "1"}"#);
    assert!(err.contains("tasks.jsonl:1: task field `problem` is not a string"), "{err}");
    let err = load_err(r#"{"id": "c", "problem": "p", "answer": {"x": 1}}"#);
    assert!(err.contains("tasks.jsonl:1: answer field `answer`: expected a string or a number"), "{err}");
    let err = load_err("[1, 2]\n");
    assert!(err.contains("tasks.jsonl:1: the record is not a JSON object"), "{err}");
    assert!(load_err("\n\n").contains("no tasks"));
    let missing = load_tasks(Path::new("/nonexistent/tasks.jsonl"), &data_cfg()).unwrap_err();
    assert!(format!("{missing:#}").contains("/nonexistent/tasks.jsonl"));
}

#[test]
fn loads_fields_by_dotted_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "nested.jsonl",
        "{\"meta\": {\"task_id\": \"t-1\"}, \"q\": \"Q1\", \"sol\": {\"a\": 5}}\n\
         {\"q\": \"Q2\", \"alt\": [\"1/2\", 0.5]}\n",
    );
    let cfg = DataConfig {
        id_field: "meta.task_id".into(),
        task_field: "q".into(),
        answer_fields: vec!["sol.a".into(), "alt".into()],
        ..data_cfg()
    };
    let tasks = load_tasks(&p, &cfg).unwrap();
    assert_eq!(
        (tasks[0].id.as_str(), tasks[0].text.as_str(), tasks[0].answers.clone()),
        ("t-1", "Q1", vec!["5".into()])
    );
    assert_eq!(tasks[1].id, "2", "no id field: the line number");
    assert_eq!(tasks[1].answers, ["1/2", "0.5"]);
    assert_eq!(field(&tasks[0].record, "meta.task_id"), Some(&serde_json::json!("t-1")));
    assert_eq!(field(&tasks[0].record, "meta.nope"), None);
}

#[test]
fn holdout_and_training_sample_are_deterministic_and_disjoint() {
    let cfg = data_cfg();
    let tasks = load_tasks(Path::new(AIME), &cfg).unwrap();
    assert_eq!(tasks.len(), 933);
    assert_eq!((tasks[0].id.as_str(), tasks[0].answers.as_slice()), ("mappa-aime-1983-1", &["60".to_string()][..]));
    let split = train_split(tasks.clone(), &cfg, 42).unwrap();
    assert_eq!(HOLDOUT_NAME, "train-holdout");
    assert_eq!(split.holdout.len(), 27, "3 % of 933, rounded down");
    assert_eq!(split.holdout[..], tasks[..27]);
    assert_eq!(split.train.len(), 512);
    let held: HashSet<&str> = split.holdout.iter().map(|t| t.id.as_str()).collect();
    let train: HashSet<&str> = split.train.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(train.len(), 512);
    assert!(held.is_disjoint(&train));
    let pos = |id: &str| tasks.iter().position(|t| t.id == id).unwrap();
    assert!(split.train.windows(2).all(|w| pos(&w[0].id) < pos(&w[1].id)), "kept in file order");
    assert_eq!(train_split(tasks.clone(), &cfg, 42).unwrap(), split);
    assert_ne!(train_split(tasks.clone(), &cfg, 43).unwrap().train, split.train);
    let all = train_split(tasks.clone(), &DataConfig { train_sample: None, holdout_fraction: 0.0, ..cfg.clone() }, 1);
    assert_eq!(all.unwrap().train, tasks);
    let too_many = train_split(tasks, &DataConfig { train_sample: Some(907), ..cfg }, 42).unwrap_err();
    assert!(too_many.to_string().contains("906 tasks remain"), "{too_many}");
}

#[test]
fn sampler_is_a_function_of_seed_and_step_with_a_fresh_shuffle_per_epoch() {
    let s = TaskSampler::new(10, 4, 42).unwrap();
    let steps: Vec<Vec<usize>> = (0..5).map(|k| s.step(k)).collect();
    assert!(steps.iter().all(|b| b.len() == 4));
    let flat: Vec<usize> = steps.concat();
    let (e0, e1) = (flat[..10].to_vec(), flat[10..].to_vec());
    for epoch in [&e0, &e1] {
        let mut sorted = epoch.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "each pass covers every task once");
    }
    assert_ne!(e0, e1, "each pass has its own order");
    // A resumed run (a new sampler) draws the same tasks for the same step, in any order of asking.
    let resumed = TaskSampler::new(10, 4, 42).unwrap();
    assert_eq!(resumed.step(3), steps[3]);
    assert_ne!(TaskSampler::new(10, 4, 7).unwrap().step(0), steps[0]);
    let wide = TaskSampler::new(3, 7, 1).unwrap().step(2);
    assert_eq!(wide.len(), 7);
    assert!(TaskSampler::new(0, 4, 1).is_err());
}

fn action(agent: usize, tokens: usize, finish: FinishReason, code: bool) -> ActionRecord {
    ActionRecord {
        agent,
        turn: 0,
        context: vec![1, 2, 3],
        tokens: vec![7; tokens],
        logprobs: vec![-1.0; tokens],
        finish,
        text: String::new(),
        code: code.then(|| "print(1)".into()),
        tool_output: code.then(|| "1\n".into()),
        files: Vec::new(),
        submission: None,
    }
}

fn episode(task_index: usize, sample: usize, correct: Option<bool>, actions: Vec<ActionRecord>) -> Episode {
    Episode {
        task_index,
        sample,
        actions,
        outputs: vec![String::new(); 3],
        skipped: Vec::new(),
        workdir: PathBuf::new(),
        final_answer_correct: correct,
        submission: None,
    }
}

#[test]
fn eval_summary_on_hand_made_episodes() {
    use FinishReason::{Length, Stop};
    let cfg = RunConfig::preset("mathchat").unwrap();
    // Problem 0: one of two correct; problem 1: both correct; problem 2: ungraded and wrong (counts as wrong).
    let eps = vec![
        episode(
            0,
            0,
            Some(true),
            vec![action(0, 10, Stop, false), action(1, 4, Stop, true), action(1, 6, Stop, false)],
        ),
        episode(
            0,
            1,
            Some(false),
            vec![action(0, 20, Length, false), action(1, 8, Length, true), action(2, 5, Stop, false)],
        ),
        episode(
            1,
            0,
            Some(true),
            vec![action(0, 30, Stop, false), action(1, 2, Stop, false), action(2, 7, Stop, false)],
        ),
        episode(1, 1, Some(true), vec![action(0, 40, Stop, false), action(2, 9, Length, false)]),
        episode(2, 0, None, vec![]),
        episode(2, 1, Some(false), vec![]),
    ];
    let scores: Vec<Vec<Option<f32>>> = vec![
        vec![Some(5.0), Some(8.0), None],
        vec![Some(7.0), None, Some(10.0)],
        vec![None, Some(2.0), Some(0.0)],
        vec![None, None],
        vec![],
        vec![],
    ];
    let s = summarize("aime", 4, &cfg, &eps, Some(&scores)).unwrap();
    assert_eq!((s.k, s.problems), (2, 3));
    assert!((s.avg_at_k - 0.5).abs() < 1e-12, "(0.5 + 1 + 0) / 3");
    assert!((s.avg_at_k_se - 0.288_675_134_594_812_9).abs() < 1e-12, "{}", s.avg_at_k_se); // sqrt(0.25 / 3)
    assert!((s.pass_at_k - 2.0 / 3.0).abs() < 1e-12);
    assert!((s.pass_at_k_se - 1.0 / 3.0).abs() < 1e-12, "{}", s.pass_at_k_se);
    let solver = &s.agents["solver"];
    assert_eq!(solver.tool_call_rate, None);
    assert_eq!((solver.response_len_mean, solver.truncation_rate), (25.0, 0.25));
    assert_eq!(solver.coach_score_mean, Some(6.0));
    let coder = &s.agents["code_executor"];
    assert_eq!((coder.tool_call_rate, coder.response_len_mean, coder.truncation_rate), (Some(0.5), 5.0, 0.25));
    assert_eq!(coder.coach_score_mean, Some(5.0));
    let verifier = &s.agents["verifier"];
    assert_eq!(
        (verifier.response_len_mean, verifier.truncation_rate, verifier.coach_score_mean),
        (7.0, 1.0 / 3.0, Some(5.0))
    );

    let line = s.to_json_line().unwrap();
    assert!(!line.contains('\n'));
    let head = r#"{"dataset":"aime","step":4,"k":2,"problems":3,"avg_at_k":0.5,"avg_at_k_se":"#;
    assert!(line.starts_with(head), "{line}");
    assert!(line.contains(r#""agents":{"code_executor":{"tool_call_rate":0.5,"response_len_mean":5.0,"truncation_rate":0.25,"coach_score_mean":5.0},"solver":{"tool_call_rate":null,"#), "{line}");
    let back: serde_json::Value = serde_json::from_str(&line).unwrap();
    let keys: Vec<&str> = back.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 9);

    let unscored = summarize("aime", 4, &cfg, &eps, None).unwrap();
    assert!(unscored.agents.values().all(|a| a.coach_score_mean.is_none()));
    assert!(summarize("aime", 4, &cfg, &eps, Some(&scores[..2])).is_err(), "scores must match the episodes");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eval.jsonl");
    s.append_to(&path).unwrap();
    unscored.append_to(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().collect::<Vec<_>>(), [line, unscored.to_json_line().unwrap()]);
}
