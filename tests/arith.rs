//! The arithmetic task generator (`mappa tasks`): every answer re-derived from the problem's text by an
//! independent reading of its sentences, reproducibility, disjoint splits, and the knobs.
use mappa::arith::{ArithConfig, ArithTask};
use std::collections::HashSet;

fn cfg(seed: u64) -> ArithConfig {
    ArithConfig { seed, min_steps: 2, max_steps: 4, magnitude: 50 }
}

fn numbers(sentence: &str) -> Vec<u64> {
    sentence.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect()
}

/// The value a problem's text describes: the opening's number, then each sentence's operation.
fn read(problem: &str) -> u64 {
    let sentences: Vec<&str> = problem.split_inclusive(['.', '?']).map(str::trim).collect();
    let mut value = numbers(sentences[0])[0];
    for s in &sentences[1..sentences.len() - 1] {
        let x = numbers(s)[0];
        value = if s.contains("times as") {
            value * x
        } else if s.contains("equal") {
            assert_eq!(value % x, 0, "an inexact division in {problem:?}");
            value / x
        } else if s.contains("more") {
            value + x
        } else if s.contains("gives away") || s.contains("out of the jar") || s.contains("Customers buy") {
            value.checked_sub(x).unwrap_or_else(|| panic!("below zero in {problem:?}"))
        } else {
            panic!("an operation this reading does not know: {s:?}")
        };
    }
    assert!(sentences.last().unwrap().ends_with('?'), "{problem:?}");
    value
}

#[test]
fn answers_follow_from_the_text() {
    let tasks = cfg(3).split("test", 2, 500, &mut HashSet::new()).unwrap();
    for t in &tasks {
        assert_eq!(t.answer, read(&t.problem).to_string(), "{}: {}", t.id, t.problem);
        assert!((2..=4).contains(&t.steps), "{t:?}");
        assert!(numbers(&t.problem)[0] <= 50, "the starting value is above the magnitude: {t:?}");
    }
    let steps: HashSet<usize> = tasks.iter().map(|t| t.steps).collect();
    assert_eq!(steps, HashSet::from([2, 3, 4]), "every step count occurs");
    let openings: HashSet<&str> = tasks.iter().map(|t| t.problem.split(' ').nth(1).unwrap()).collect();
    assert!(openings.len() >= 3, "the story families all occur: {openings:?}");
}

#[test]
fn splits_are_reproducible_and_disjoint_and_test_does_not_depend_on_train() {
    let make = |train: usize| -> Vec<Vec<ArithTask>> {
        let mut taken = HashSet::new();
        [("test", 300), ("valid", 100), ("train", train)]
            .iter()
            .enumerate()
            .map(|(i, &(name, n))| cfg(7).split(name, i as u64, n, &mut taken).unwrap())
            .collect()
    };
    let (small, large) = (make(100), make(1000));
    assert_eq!(small[0], large[0], "the test split depends on the train size");
    assert_eq!(small, make(100), "not reproducible");
    let texts = |ts: &[ArithTask]| ts.iter().map(|t| t.problem.clone()).collect::<HashSet<_>>();
    let (test, valid, train) = (texts(&large[0]), texts(&large[1]), texts(&large[2]));
    assert_eq!(test.len() + valid.len() + train.len(), 300 + 100 + 1000, "a text occurs twice");
    assert!(test.is_disjoint(&train) && test.is_disjoint(&valid) && valid.is_disjoint(&train));
    let other = cfg(8).split("test", 0, 300, &mut HashSet::new()).unwrap();
    assert_ne!(other, large[0], "another seed gives other problems");
}

#[test]
fn bad_knobs_are_refused() {
    for (min_steps, max_steps, magnitude, want) in
        [(0, 2, 50, "steps"), (3, 2, 50, "steps"), (2, 9, 50, "steps"), (2, 3, 5, "magnitude")]
    {
        let c = ArithConfig { seed: 0, min_steps, max_steps, magnitude };
        let err = c.split("test", 0, 5, &mut HashSet::new()).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// `mappa tasks` writes files the run's data loader reads with the presets' field names.
#[test]
fn the_command_writes_loadable_task_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mappa"))
        .args(["tasks", "--out"])
        .arg(dir.path())
        .args(["--train", "20", "--valid", "5", "--test", "10", "--seed", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = mappa::run_config::RunConfig::preset("mathchat").unwrap().data;
    for (name, n) in [("train", 20), ("valid", 5), ("test", 10)] {
        let tasks = mappa::data::load_tasks(&dir.path().join(format!("{name}.jsonl")), &data).unwrap();
        assert_eq!(tasks.len(), n);
        assert_eq!(tasks[0].answers, vec![read(&tasks[0].text).to_string()]);
    }
}
