//! DSBench offline: the synthetic tasks have the real task files' layout and load with the dsbench preset's
//! data settings; submissions to them grade by id (perfect, shuffled, constant, malformed), a simple
//! linear model beats a constant on every task; and the real task definitions in shared/data/dsbench grade
//! fabricated CSVs placed where their records point, so pointing `data.files_root` at the real data works.
use mappa::data::{field, load_tasks};
use mappa::dsbench::metrics::Metric;
use mappa::dsbench::{
    grade_submission, load_task_infos, write_tasks, Grade, TabularConfig, TaskInfo, TaskRecord, Written, ANSWER_FILE,
};
use mappa::run_config::RunConfig;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/dsbench");

fn cfg(seed: u64) -> TabularConfig {
    TabularConfig { seed, train_tasks: 6, eval_tasks: 2, ..TabularConfig::default() }
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
    (header, rows)
}

fn write_csv(path: &Path, header: &[String], rows: &[Vec<String>]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut writer = csv::Writer::from_path(path).unwrap();
    for row in std::iter::once(header).chain(rows.iter().map(|r| r.as_slice())) {
        writer.write_record(row).unwrap();
    }
    writer.flush().unwrap();
}

fn records(path: &Path) -> Vec<TaskRecord> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A record's `./`-relative path under `root`.
fn under(root: &Path, relative: &str) -> PathBuf {
    root.join(relative.strip_prefix("./").unwrap_or_else(|| panic!("not ./-relative: {relative}")))
}

/// A task of the generated set: its record, info and files.
struct Task {
    record: TaskRecord,
    info: TaskInfo,
    train: PathBuf,
    test: PathBuf,
    answer_dir: PathBuf,
}

fn tasks(written: &Written) -> Vec<Task> {
    let infos = load_task_infos(&written.info).unwrap();
    let mut all = records(&written.train);
    all.extend(records(&written.eval));
    all.into_iter()
        .map(|record| {
            let m = &record.metadata;
            Task {
                info: infos[&m.task_id].clone(),
                train: under(&written.files_root, &m.train_file),
                test: under(&written.files_root, &m.test_file),
                answer_dir: under(&written.files_root, &m.answer_dir),
                record,
            }
        })
        .collect()
}

/// Writes `rows` under `header` as `dir/name` and grades it.
fn submit(task: &Task, dir: &Path, name: &str, header: &[String], rows: &[Vec<String>]) -> Grade {
    let path = dir.join(name);
    write_csv(&path, header, rows);
    grade_submission(&path, &task.answer_dir, &task.info)
}

#[test]
fn layout_matches_the_real_task_files() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_tasks(&cfg(7), dir.path()).unwrap();
    assert_eq!(written.files_root, dir.path());

    // The same fields as the real records, and the real records' path style with the task id in it.
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    let real: Vec<Value> = std::fs::read_to_string(format!("{SHARED}/mappa_dsbench_modeling_train.json"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ours: Vec<Value> =
        std::fs::read_to_string(&written.train).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(ours.len(), 6);
    let path_style = |r: &Value| {
        let id = r["metadata"]["task_id"].as_str().unwrap();
        assert_eq!(r["metadata"]["train_file"], format!("./data/DSBench/data/data_resplit/{id}/train.csv"));
        assert_eq!(r["metadata"]["test_file"], format!("./data/DSBench/data/data_resplit/{id}/test.csv"));
        assert_eq!(r["metadata"]["answer_dir"], format!("./data/DSBench/data/answers/{id}"));
        assert_eq!(r["metadata"]["task_type"], "data_modeling");
        assert_eq!(r["answer"], Value::Null);
    };
    for r in real.iter().chain(&ours) {
        assert_eq!(keys(r), keys(&real[0]));
        assert_eq!(keys(&r["metadata"]), keys(&real[0]["metadata"]));
        path_style(r);
    }

    // The dsbench preset's data settings load them (with the generated definitions instead of the real ones),
    // and its staged files resolve under the files root.
    let mut data = RunConfig::preset("dsbench").unwrap().data;
    data.task_info = Some(written.info.clone());
    let loaded = load_tasks(&written.train, &data).unwrap();
    assert_eq!(loaded.len(), 6);
    assert!(loaded.iter().all(|t| t.info.is_some()), "each task carries its definition");
    assert!(!data.stage_files.is_empty());
    for t in &loaded {
        for source in data.stage_files.values() {
            assert!(under(&written.files_root, field(&t.record, source).unwrap().as_str().unwrap()).is_file());
        }
        assert!(under(&written.files_root, &t.answers[0]).join(ANSWER_FILE).is_file());
    }

    let all = tasks(&written);
    let ids: HashSet<&str> = all.iter().map(|t| t.record.metadata.task_id.as_str()).collect();
    assert_eq!(ids.len(), 8, "train and eval task ids are distinct");
    let metrics: BTreeSet<&str> = all[..6].iter().map(|t| t.info.metric.as_str()).collect();
    assert_eq!(metrics, BTreeSet::from(["accuracy", "mae", "rmse", "rmsle", "roc_auc"]));
    for t in &all {
        let target = &t.info.targets()[0];
        let (train_header, train) = read_csv(&t.train);
        let (test_header, test) = read_csv(&t.test);
        let (answer_header, answer) = read_csv(&t.answer_dir.join(ANSWER_FILE));
        assert_eq!((train.len(), test.len()), (200, 80));
        assert_eq!(train_header.len(), 1 + 6 + 1, "id, 6 features, target");
        assert_eq!(train_header[..train_header.len() - 1], test_header[..]);
        assert_eq!(train_header.last(), Some(target));
        assert_eq!(answer_header, [t.info.id_column.clone(), target.clone()]);
        assert_eq!(test.iter().map(|r| &r[0]).collect::<Vec<_>>(), answer.iter().map(|r| &r[0]).collect::<Vec<_>>());
        // Empty cells in exactly one column, a numeric one; one categorical text column.
        let gappy: Vec<usize> = (0..test_header.len()).filter(|&c| train.iter().any(|r| r[c].is_empty())).collect();
        assert_eq!(gappy.len(), 1, "{}", t.record.metadata.task_id);
        assert!(train.iter().filter(|r| !r[gappy[0]].is_empty()).all(|r| r[gappy[0]].parse::<f64>().is_ok()));
        let text: Vec<usize> = (1..test_header.len())
            .filter(|&c| train.iter().any(|r| r[c].parse::<f64>().is_err() && !r[c].is_empty()))
            .collect();
        assert_eq!(text, [test_header.len() - 1]);
        // The prompt is in the cleaned style and names the metric, the direction and the format.
        let metric = Metric::parse(&t.info.metric).unwrap();
        let prompt = &t.record.prompt;
        assert_eq!(prompt, &t.info.cleaned_prompt);
        assert!(prompt.starts_with("Task: Predict "), "{prompt}");
        let direction = if metric.higher_is_better() { "higher" } else { "lower" };
        assert!(prompt.contains(&format!("Evaluation: {} - {direction} is better.", metric.title())), "{prompt}");
        let example = format!("Submission Format:\nid,{target}\n{},", test[0][0]);
        assert!(prompt.contains(&example) && prompt.contains(&format!("\n{},", test[1][0])), "{prompt}");
        let data_type = &t.record.metadata.data_type;
        assert_eq!(data_type, &t.info.task_type);
        assert_eq!(data_type == "classification", matches!(metric, Metric::RocAuc | Metric::Accuracy));
    }

    // A pure function of the seed: the same files again; another seed, other data.
    let again = tempfile::tempdir().unwrap();
    write_tasks(&cfg(7), again.path()).unwrap();
    let other = tempfile::tempdir().unwrap();
    write_tasks(&cfg(8), other.path()).unwrap();
    for t in &all {
        let relative = t.train.strip_prefix(dir.path()).unwrap();
        let bytes = std::fs::read(&t.train).unwrap();
        assert_eq!(bytes, std::fs::read(again.path().join(relative)).unwrap());
        assert_ne!(bytes, std::fs::read(other.path().join(relative)).unwrap());
    }
    assert_eq!(
        std::fs::read(&written.info).unwrap(),
        std::fs::read(again.path().join(written.info.file_name().unwrap())).unwrap()
    );
}

/// A constant prediction: probability 0.5, the most common train label, or the train mean.
fn constant_prediction(metric: Metric, train: &[Vec<String>]) -> String {
    let targets: Vec<&String> = train.iter().map(|r| r.last().unwrap()).collect();
    match metric {
        Metric::RocAuc => "0.5".to_string(),
        Metric::Accuracy => {
            let mut counts = BTreeMap::new();
            targets.iter().for_each(|l| *counts.entry(*l).or_insert(0) += 1);
            counts.into_iter().max_by_key(|&(_, c)| c).unwrap().0.clone()
        }
        _ => (targets.iter().map(|v| v.parse::<f64>().unwrap()).sum::<f64>() / targets.len() as f64).to_string(),
    }
}

#[test]
fn submissions_grade_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_tasks(&cfg(11), &dir.path().join("tasks")).unwrap();
    for t in &tasks(&written) {
        let id = &t.record.metadata.task_id;
        let (header, answer) = read_csv(&t.answer_dir.join(ANSWER_FILE));
        let metric = Metric::parse(&t.info.metric).unwrap();
        let best = if metric.higher_is_better() { 1.0 } else { 0.0 };

        let perfect = submit(t, dir.path(), "submission.csv", &header, &answer);
        assert!(perfect.valid, "{id}: {}", perfect.summary());
        assert_eq!((perfect.value, perfect.rows, perfect.quality()), (Some(best), 80, 1.0), "{id}");
        let mut shuffled = answer.clone();
        shuffled.reverse();
        shuffled.rotate_left(17);
        assert_eq!(submit(t, dir.path(), "shuffled.csv", &header, &shuffled).value, Some(best), "{id}");

        let constant = constant_prediction(metric, &read_csv(&t.train).1);
        let rows: Vec<Vec<String>> = answer.iter().map(|r| vec![r[0].clone(), constant.clone()]).collect();
        let g = submit(t, dir.path(), "constant.csv", &header, &rows);
        assert!(g.valid, "{id}: {}", g.summary());
        let v = g.value.unwrap();
        match metric {
            Metric::RocAuc => assert_eq!(v, 0.5),
            Metric::Accuracy => assert!(v < 0.8, "{id}: {}", g.summary()),
            // The baseline is the best constant of its kind, so the train mean scores no better.
            _ => assert!(v > 0.0 && v >= g.baseline.unwrap() && g.quality() == 0.0, "{id}: {}", g.summary()),
        }
        assert!(g.quality() < 0.8, "{id}: {}", g.summary());

        // Malformed: a misspelt target column, three rows short, a word for a value.
        let target = &header[1];
        let misspelt = [header[0].clone(), target.to_lowercase() + "_pred"];
        let g = submit(t, dir.path(), "misspelt.csv", &misspelt, &answer);
        assert_eq!(
            g.reason.unwrap(),
            format!("misspelt.csv header lacks the target column `{target}` (header: id, {})", misspelt[1])
        );
        let g = submit(t, dir.path(), "short.csv", &header, &answer[..77]);
        assert_eq!(
            g.reason.unwrap(),
            format!("missing ids (3 of 80), e.g. {}; the file has 77 rows for 80 test ids", answer[77][0])
        );
        if metric != Metric::Accuracy {
            let mut worded = answer.clone();
            worded[5][1] = "oops".into();
            let g = submit(t, dir.path(), "worded.csv", &header, &worded);
            assert_eq!(
                g.summary(),
                format!("worded.csv invalid: unparsable value `oops` in column `{target}` for id {}", answer[5][0])
            );
        }
    }
}

/// Least squares with a small ridge, by Gaussian elimination with partial pivoting.
fn fit(x: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let k = x[0].len();
    let mut a: Vec<Vec<f64>> = (0..k)
        .map(|i| {
            let mut row: Vec<f64> = (0..k).map(|j| x.iter().map(|r| r[i] * r[j]).sum::<f64>()).collect();
            row[i] += 1e-3;
            row.push(x.iter().zip(y).map(|(r, t)| r[i] * t).sum());
            row
        })
        .collect();
    for c in 0..k {
        let p = (c..k).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap();
        a.swap(c, p);
        let pivot = a[c].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                row.iter_mut().zip(&pivot).skip(c).for_each(|(x, p)| *x -= f * p);
            }
        }
    }
    (0..k).map(|i| a[i][k] / a[i][i]).collect()
}

/// Design rows: intercept, standardised numeric features (empty cells: the train mean), categories one-hot.
fn design(train: &[Vec<String>], rows: &[Vec<String>], numeric: usize) -> Vec<Vec<f64>> {
    let value = |r: &Vec<String>, j: usize| r[1 + j].parse::<f64>().ok();
    let stats: Vec<(f64, f64)> = (0..numeric)
        .map(|j| {
            let v: Vec<f64> = train.iter().filter_map(|r| value(r, j)).collect();
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
        })
        .collect();
    let levels: BTreeSet<&String> = train.iter().map(|r| &r[1 + numeric]).collect();
    rows.iter()
        .map(|r| {
            let mut x = vec![1.0];
            x.extend((0..numeric).map(|j| value(r, j).map_or(0.0, |v| (v - stats[j].0) / stats[j].1)));
            x.extend(levels.iter().skip(1).map(|l| f64::from(u8::from(&r[1 + numeric] == *l))));
            x
        })
        .collect()
}

#[test]
fn a_linear_model_beats_a_constant() {
    let dir = tempfile::tempdir().unwrap();
    let written =
        write_tasks(&TabularConfig { seed: 5, ..TabularConfig::default() }, &dir.path().join("tasks")).unwrap();
    for t in &tasks(&written) {
        let id = &t.record.metadata.task_id;
        let (header, train) = read_csv(&t.train);
        let (_, test) = read_csv(&t.test);
        let numeric = header.len() - 3;
        let (xtrain, xtest) = (design(&train, &train, numeric), design(&train, &test, numeric));
        let targets: Vec<&String> = train.iter().map(|r| r.last().unwrap()).collect();
        let predict = |y: &[f64]| -> Vec<f64> {
            let beta = fit(&xtrain, y);
            xtest.iter().map(|x| x.iter().zip(&beta).map(|(a, b)| a * b).sum()).collect()
        };
        let metric = Metric::parse(&t.info.metric).unwrap();
        let predictions: Vec<String> = match metric {
            Metric::RocAuc => {
                let y: Vec<f64> = targets.iter().map(|l| if *l == "1" { 1.0 } else { 0.0 }).collect();
                predict(&y).iter().map(|s| (1.0 / (1.0 + (-8.0 * (s - 0.5)).exp())).to_string()).collect()
            }
            Metric::Accuracy => {
                // One regression per class; the largest wins.
                let labels: BTreeSet<&String> = targets.iter().copied().collect();
                let scores: Vec<(&String, Vec<f64>)> = labels
                    .iter()
                    .map(|&l| (l, predict(&targets.iter().map(|t| f64::from(u8::from(*t == l))).collect::<Vec<_>>())))
                    .collect();
                (0..test.len())
                    .map(|r| scores.iter().max_by(|a, b| a.1[r].total_cmp(&b.1[r])).unwrap().0.clone())
                    .collect()
            }
            Metric::Rmsle => {
                let y: Vec<f64> = targets.iter().map(|v| v.parse::<f64>().unwrap().ln_1p()).collect();
                predict(&y).iter().map(|s| s.exp_m1().max(0.0).to_string()).collect()
            }
            _ => predict(&targets.iter().map(|v| v.parse().unwrap()).collect::<Vec<_>>())
                .iter()
                .map(f64::to_string)
                .collect(),
        };
        let rows: Vec<Vec<String>> = test.iter().zip(predictions).map(|(r, p)| vec![r[0].clone(), p]).collect();
        let columns = [header[0].clone(), header.last().unwrap().clone()];
        let model = submit(t, dir.path(), "model.csv", &columns, &rows);
        let constant = constant_prediction(metric, &train);
        let rows: Vec<Vec<String>> = test.iter().map(|r| vec![r[0].clone(), constant.clone()]).collect();
        let base = submit(t, dir.path(), "constant.csv", &columns, &rows);
        let (v, c) = (model.value.unwrap(), base.value.unwrap());
        match metric {
            Metric::RocAuc => assert!(v >= 0.75, "{id}: {}", model.summary()),
            Metric::Accuracy => assert!(v >= c + 0.1, "{id}: {} against {c}", model.summary()),
            // At most 65 % of the best constant's error.
            _ => assert!(model.quality() >= 0.35, "{id}: {}", model.summary()),
        }
    }
}

#[test]
fn real_task_definitions_grade_fabricated_csvs() {
    let infos = load_task_infos(Path::new(&format!("{SHARED}/mappa_dsbench_modeling_cleaned_prompts.json"))).unwrap();
    assert_eq!(infos.len(), 72);
    // Every real metric is supported but two.
    let unsupported: BTreeSet<&str> =
        infos.values().map(|i| i.metric.as_str()).filter(|m| Metric::parse(m).is_none()).collect();
    assert_eq!(unsupported, BTreeSet::from(["jaccard", "map_at_3"]));
    let eval = records(Path::new(&format!("{SHARED}/mappa_dsbench_modeling_eval.json")));
    let root = tempfile::tempdir().unwrap();
    let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let rows = |v: &[&[&str]]| v.iter().map(|r| s(r)).collect::<Vec<_>>();

    // Fabricates the task's CSVs where its record points, then grades `submission` with its real info.
    let grade = |task: &str, header: &[&str], answer: &[&[&str]], submission: &[&[&str]]| -> Grade {
        let record = eval.iter().find(|r| r.metadata.task_id == task).unwrap();
        let info = &infos[task];
        let m = &record.metadata;
        let targets = info.targets();
        let features = ["feature_a".to_string()];
        let train_header: Vec<String> =
            [info.id_column.clone()].iter().chain(&features).chain(targets).cloned().collect();
        let train: Vec<Vec<String>> = answer.iter().map(|r| [s(&r[..1]), s(&["1.5"]), s(&r[1..])].concat()).collect();
        write_csv(&under(root.path(), &m.train_file), &train_header, &train);
        let test: Vec<Vec<String>> = answer.iter().map(|r| s(&[r[0], "2.5"])).collect();
        write_csv(&under(root.path(), &m.test_file), &[info.id_column.clone(), features[0].clone()], &test);
        let answer_dir = under(root.path(), &m.answer_dir);
        write_csv(&answer_dir.join(ANSWER_FILE), &s(header), &rows(answer));
        let sub = root.path().join(task).join("submission.csv");
        write_csv(&sub, &s(header), &rows(submission));
        grade_submission(&sub, &answer_dir, info)
    };

    // playground-series-s3e25: median absolute error of Hardness. Errors .1, .2, .3, 0, .5: median 0.2;
    // the answer's median 4 is off by 2, 0.5, 1, 2, 0: median 1.
    let answer: &[&[&str]] =
        &[&["10407", "2.0"], &["10408", "3.5"], &["10409", "5.0"], &["10410", "6.0"], &["10411", "4.0"]];
    let sub: &[&[&str]] =
        &[&["10411", "3.5"], &["10409", "5.3"], &["10407", "2.1"], &["10408", "3.3"], &["10410", "6.0"]];
    let g = grade("playground-series-s3e25", &["id", "Hardness"], answer, sub);
    assert_eq!(
        g.summary(),
        "submission.csv valid: 5 rows, medae = 0.2000 (lower is better; a constant prediction scores 1.0000)"
    );
    assert!((g.value.unwrap() - 0.2).abs() < 1e-12 && (g.quality() - 0.8).abs() < 1e-12);

    // tabular-playground-series-jul-2021: three targets, mean column-wise RMSLE, ids are timestamps.
    // Only benzene is off: ln(1+1) vs ln(1+3) both ways, so its RMSLE is ln 2 and the mean ln 2 / 3.
    let header = ["date_time", "target_carbon_monoxide", "target_benzene", "target_nitrogen_oxides"];
    let answer: &[&[&str]] =
        &[&["2011-01-01 00:00:00", "2.0", "1", "300"], &["2011-01-01 01:00:00", "1.5", "3", "250"]];
    let sub: &[&[&str]] = &[&["2011-01-01 01:00:00", "1.5", "1", "250"], &["2011-01-01 00:00:00", "2.0", "3", "300"]];
    let g = grade("tabular-playground-series-jul-2021", &header, answer, sub);
    assert!((g.value.unwrap() - std::f64::consts::LN_2 / 3.0).abs() < 1e-12, "{}", g.summary());

    // lmsys-chatbot-arena: log loss over the three outcome columns, -(ln 0.7 + ln 0.6) / 2.
    let header = ["id", "winner_model_a", "winner_model_b", "winner_tie"];
    let answer: &[&[&str]] = &[&["136060", "1", "0", "0"], &["211333", "0", "0", "1"]];
    let sub: &[&[&str]] = &[&["136060", "0.7", "0.2", "0.1"], &["211333", "0.2", "0.2", "0.6"]];
    let g = grade("lmsys-chatbot-arena", &header, answer, sub);
    assert!((g.value.unwrap() - 0.4337502838523616).abs() < 1e-12, "{}", g.summary());

    // playground-series-s4e1 (churn, roc_auc): the eval task's real record and info, 0/1 answers.
    let answer: &[&[&str]] = &[&["165034", "0"], &["165035", "1"], &["165036", "0"], &["165037", "1"]];
    let sub: &[&[&str]] = &[&["165034", "0.1"], &["165035", "0.3"], &["165036", "0.35"], &["165037", "0.8"]];
    let g = grade("playground-series-s4e1", &["id", "Exited"], answer, sub);
    assert_eq!(g.summary(), "submission.csv valid: 4 rows, roc_auc = 0.7500 (higher is better)");
    let sub: &[&[&str]] = &[&["165034", "0.1"], &["165035", "1.3"], &["165036", "0.35"], &["165037", "0.8"]];
    let g = grade("playground-series-s4e1", &["id", "Exited"], answer, sub);
    assert_eq!(
        g.reason.unwrap(),
        "value 1.3 in column `Exited` for id 165035 is outside roc_auc's domain (a probability in [0, 1])"
    );
}
