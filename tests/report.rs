//! `mappa report`: a synthetic run directory in, `report/index.html` and one SVG per chart out. Checks the
//! table values against the input, the escaping of names from the config, the skipping of empty charts and
//! the handling of bad `metrics.jsonl` lines (truncated last line: skipped; any other: an error with its line).
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One metrics record with every field the report reads; `tools` false gives a null tool-call rate.
fn metric(step: u64, agent: &str, reward: f64, tools: bool) -> Value {
    json!({
        "step": step, "agent": agent, "time": 1764000000.0 + step as f64, "reward_mean": reward, "reward_std": 1.5,
        "actions": 8, "unscored": 0, "tokens": 1234, "loss": 0.01, "kl": 0.001 * step as f64, "approx_kl": 0.0,
        "clip_frac": 0.02, "grad_norm": 0.5, "lr": 1e-6, "response_len_mean": 150.0 + step as f64,
        "truncation_rate": 0.0, "tool_call_rate": if tools { json!(0.5) } else { Value::Null },
        "train_accuracy": 0.25, "rollout_s": 10.0, "coach_s": 3.0, "train_s": 20.0, "tokens_per_s": 60.0,
        "some_future_field": "ignored"
    })
}

fn eval(step: u64, dataset: &str, avg: f64, agents: &[&str]) -> Value {
    let per_agent: serde_json::Map<String, Value> = agents
        .iter()
        .map(|a| (a.to_string(), json!({"tool_call_rate": null, "response_len_mean": 300.0, "truncation_rate": 0.1})))
        .collect();
    json!({
        "step": step, "dataset": dataset, "k": 4, "problems": 32, "avg_at_k": avg, "avg_at_k_se": 0.05,
        "pass_at_k": avg + 0.2, "pass_at_k_se": 0.08, "agents": per_agent
    })
}

fn jsonl(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

fn config(name: &str, agents: &[&str]) -> String {
    let mut t = format!("[run]\nname = {}\nsteps = 3\n", toml_str(name));
    for a in agents {
        t.push_str(&format!("\n[[agents]]\nname = {}\nprompt = \"{{{{ task }}}}\"\n", toml_str(a)));
    }
    t
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// A run of 3 steps for `solver` (uses tools) and `verifier` (no tools), evaluated on two datasets at
/// steps 0 and 2, with a checkpoint at step 2. The solver's last reward is 7.25.
fn standard_run(dir: &Path) {
    let mut m = Vec::new();
    for (step, (rs, rv)) in [(1, (5.0, 4.0)), (2, (6.5, 4.5)), (3, (7.25, 5.125))] {
        m.push(metric(step, "solver", rs, true));
        m.push(metric(step, "verifier", rv, false));
    }
    fs::write(dir.join("metrics.jsonl"), jsonl(&m)).unwrap();
    let agents = ["solver", "verifier"];
    let e = [
        eval(0, "gsm8k_test", 0.31, &agents),
        eval(0, "math500", 0.12, &agents),
        eval(2, "gsm8k_test", 0.42, &agents),
        eval(2, "math500", 0.10, &agents),
    ];
    fs::write(dir.join("eval.jsonl"), jsonl(&e)).unwrap();
    fs::write(dir.join("config.toml"), config("demo-run", &["verifier", "solver"])).unwrap();
    fs::create_dir_all(dir.join("checkpoints/step-000002/solver")).unwrap();
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The `<tr>` of the table row whose first cell is `first`.
fn table_row<'a>(html: &'a str, first: &str) -> &'a str {
    let start = html.find(&format!("<tr><td>{first}</td>")).unwrap_or_else(|| panic!("no row for {first}:\n{html}"));
    let len = html[start..].find("</tr>").expect("row end");
    &html[start..start + len]
}

/// Polylines drawn with the data stroke (axes and grid are thinner, legend samples thicker).
fn data_lines(svg: &str) -> usize {
    svg.lines().filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\"")).count()
}

fn report(dir: &Path) -> PathBuf {
    mappa::report::write_report(dir).unwrap_or_else(|e| panic!("report failed: {e:#}"))
}

fn error_of(dir: &Path) -> String {
    format!("{:#}", mappa::report::write_report(dir).expect_err("report should fail"))
}

#[test]
fn index_has_the_table_and_the_charts() {
    let tmp = tempfile::tempdir().unwrap();
    standard_run(tmp.path());
    let index = report(tmp.path());
    assert!(index.is_absolute() && index.is_file(), "{}", index.display());
    assert_eq!(index, fs::canonicalize(tmp.path()).unwrap().join("report/index.html"));
    let html = read(&index);
    for name in ["demo-run", "solver", "verifier", "gsm8k_test", "math500"] {
        assert!(html.contains(name), "index.html lacks {name}");
    }
    assert!(table_row(&html, "solver").contains("<td class=\"num\">3</td><td class=\"num\">7.25</td>"));
    assert!(table_row(&html, "verifier").contains("5.125"));
    let gsm = table_row(&html, "gsm8k_test");
    assert!(gsm.contains("0.42 ± 0.05 (step 2)"), "best and last avg@4: {gsm}");
    assert!(gsm.contains("0.62 ± 0.08 (step 2)"), "pass@4: {gsm}");
    let math = table_row(&html, "math500");
    assert!(math.contains("0.12 ± 0.05 (step 0)") && math.contains("0.1 ± 0.05 (step 2)"), "{math}");
    assert!(html.contains("3 (last step 3)"), "steps done");
    assert!(html.contains("rollout 30 s, coach 9 s, train 60 s (total 99 s)"), "times are per step, not per agent");
    assert!(html.contains("steps 2"), "checkpoints");
    // The pipeline order of config.toml wins over the order of appearance.
    assert!(html.find("<tr><td>verifier").unwrap() < html.find("<tr><td>solver").unwrap());
}

#[test]
fn every_chart_is_an_svg_with_a_line_per_series() {
    let tmp = tempfile::tempdir().unwrap();
    standard_run(tmp.path());
    let index = report(tmp.path());
    let html = read(&index);
    let out = tmp.path().join("report");
    let expected = [
        ("reward.svg", vec!["solver", "verifier"]),
        ("eval-gsm8k_test.svg", vec!["avg@4", "pass@4"]),
        ("eval-math500.svg", vec!["avg@4", "pass@4"]),
        ("response_len.svg", vec!["solver (train)", "verifier (eval math500)"]),
        ("tool_call_rate.svg", vec!["solver"]),
        ("kl.svg", vec!["solver", "verifier"]),
        ("clip_frac.svg", vec!["solver", "verifier"]),
        ("grad_norm.svg", vec!["solver", "verifier"]),
        ("lr.svg", vec!["solver", "verifier"]),
        ("time.svg", vec!["rollout", "coach", "train"]),
    ];
    for (file, labels) in &expected {
        let svg = read(&out.join(file));
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "{file} is not an SVG");
        assert!(data_lines(&svg) >= labels.len(), "{file}: fewer lines than series");
        for label in labels {
            assert!(svg.contains(&format!(">\n{label}\n<")) || svg.contains(&format!(">{label}<")), "{file}: {label}");
        }
        assert!(html.contains(&format!("<img src=\"{file}\"")), "index.html does not show {file}");
    }
    let tools = read(&out.join("tool_call_rate.svg"));
    assert!(!tools.contains("verifier"), "an agent without tools has no tool-call curve");
    let svgs = fs::read_dir(&out).unwrap().filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "svg");
    assert_eq!(svgs.count(), expected.len());
}

#[test]
fn binary_prints_the_index_path_last_without_fonts() {
    let tmp = tempfile::tempdir().unwrap();
    standard_run(tmp.path());
    let out = Command::new(env!("CARGO_BIN_EXE_mappa"))
        .arg("report")
        .arg(tmp.path())
        .env("FONTCONFIG_FILE", "/dev/null")
        .env("FONTCONFIG_PATH", tmp.path().join("no-fonts"))
        .env("XDG_DATA_HOME", tmp.path().join("no-fonts"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().expect("a line on stdout");
    assert_eq!(Path::new(last), fs::canonicalize(tmp.path()).unwrap().join("report/index.html"));
    assert!(Path::new(last).is_file());
}

#[test]
fn names_from_the_run_are_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let evil = "<script>alert('x')</script>";
    let m = [metric(1, evil, 1.0, true), metric(2, evil, 2.0, true)];
    fs::write(tmp.path().join("metrics.jsonl"), jsonl(&m)).unwrap();
    fs::write(tmp.path().join("eval.jsonl"), jsonl(&[eval(1, "a&b<i>", 0.5, &[evil])])).unwrap();
    fs::write(tmp.path().join("config.toml"), config("run <b>\"bold\"</b>", &[evil])).unwrap();
    let index = report(tmp.path());
    let html = read(&index);
    assert!(!html.contains("<script") && !html.contains("<b>") && !html.contains("<i>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), "{html}");
    assert!(html.contains("a&amp;b&lt;i&gt;"));
    assert!(html.contains("run &lt;b&gt;&quot;bold&quot;&lt;/b&gt;"));
    for entry in fs::read_dir(tmp.path().join("report")).unwrap() {
        let path = entry.unwrap().path();
        let text = read(&path);
        assert!(!text.contains("<script") && !text.contains("<i>"), "{}", path.display());
    }
    let reward = read(&tmp.path().join("report/reward.svg"));
    assert!(reward.contains("&lt;script&gt;"), "the legend shows the escaped name");
    assert!(tmp.path().join("report/eval-a_b_i_.svg").is_file(), "dataset names become safe file names");
}

#[test]
fn missing_run_dir_or_metrics_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("no-such-run");
    assert!(error_of(&gone).contains(&gone.display().to_string()));
    let err = error_of(tmp.path());
    assert!(err.contains(&tmp.path().join("metrics.jsonl").display().to_string()), "{err}");
    let via_run = mappa::report::run(mappa::report::ReportArgs { run_dir: tmp.path().to_path_buf() });
    assert!(via_run.is_err());
}

#[test]
fn truncated_last_line_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = jsonl(&[metric(1, "solver", 1.0, true), metric(2, "solver", 2.5, true)]);
    let third = metric(3, "solver", 9.0, true).to_string();
    text.push_str(&third[..third.len() / 2]);
    fs::write(tmp.path().join("metrics.jsonl"), text).unwrap();
    let html = read(&report(tmp.path()));
    assert!(table_row(&html, "solver").contains("<td class=\"num\">2</td><td class=\"num\">2.5</td>"), "{html}");
    assert!(html.contains("2 (last step 2)"));
    let run_name = tmp.path().file_name().unwrap().to_string_lossy().to_string();
    assert!(html.contains(&format!("<h1>{run_name}</h1>")), "without config.toml the run is named after its directory");
}

#[test]
fn malformed_middle_line_is_an_error_with_its_line_number() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.jsonl");
    let good = jsonl(&[metric(1, "solver", 1.0, true)]);
    fs::write(&path, format!("{good}\n{{\"step\": 2, \"agent\": \"solver\" \"reward_mean\": 1}}\n{good}")).unwrap();
    let err = error_of(tmp.path());
    assert!(err.contains(&format!("{} line 3", path.display())), "{err}");
    // A complete record without its agent is as bad, even as the last line.
    fs::write(&path, format!("{good}{{\"step\": 2}}\n")).unwrap();
    let err = error_of(tmp.path());
    assert!(err.contains("line 2") && err.contains("agent"), "{err}");
    // So is a malformed eval.jsonl.
    fs::write(&path, &good).unwrap();
    fs::write(tmp.path().join("eval.jsonl"), "nonsense\n{}\n").unwrap();
    let err = error_of(tmp.path());
    assert!(err.contains("eval.jsonl line 1"), "{err}");
}

#[test]
fn charts_without_data_are_skipped_and_gaps_break_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let m = [
        json!({"step": 1, "agent": "solver", "reward_mean": 1.0, "kl": null}),
        json!({"step": 2, "agent": "solver", "reward_mean": null}),
        json!({"step": 3, "agent": "solver", "reward_mean": 3.0}),
        json!({"step": 4, "agent": "solver", "reward_mean": 4.0}),
    ];
    fs::write(tmp.path().join("metrics.jsonl"), jsonl(&m)).unwrap();
    let html = read(&report(tmp.path()));
    let mut files: Vec<String> = fs::read_dir(tmp.path().join("report"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["index.html", "reward.svg"]);
    assert_eq!(html.matches("<img ").count(), 1);
    assert!(html.contains("not recorded"), "no timings");
    assert!(!html.contains("<h2>Evaluation</h2>"), "no eval.jsonl, no eval table");
    // Steps 1 | 3-4: the gap at step 2 gives two pieces of line, not one.
    let svg = read(&tmp.path().join("report/reward.svg"));
    assert_eq!(data_lines(&svg), 2, "{svg}");
}

/// Values at the ends of f64 (a diverged run) still make a report, promptly: a chart spanning ±1e308, one
/// whose values are all 1e308, one narrow next to its magnitude, and subnormals. A chart range the plotting
/// library cannot step through once hung `mappa report` forever; the binary gets a deadline here.
#[test]
fn extreme_values_still_make_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = Vec::new();
    for (step, big, narrow, tiny) in [(1, 1e308, 1e15, 5e-324), (2, -1e308, 1e15 + 1.0, 1e-310), (3, 1e308, 1e15, 0.0)]
    {
        let mut r = metric(step, "solver", big, true);
        (r["loss"], r["grad_norm"], r["kl"], r["lr"]) = (json!(1e308), json!(narrow), json!(tiny), json!(f64::MAX));
        m.push(r);
    }
    fs::write(tmp.path().join("metrics.jsonl"), jsonl(&m)).unwrap();
    fs::write(tmp.path().join("config.toml"), config("extreme", &["solver"])).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mappa"))
        .args(["report", tmp.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("mappa report did not finish within 60 s on extreme values");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for svg in fs::read_dir(tmp.path().join("report")).unwrap() {
        let p = svg.unwrap().path();
        if p.extension().is_some_and(|e| e == "svg") {
            assert!(
                !read(&p).contains("NaN") && !read(&p).contains("inf"),
                "{} has non-finite coordinates",
                p.display()
            );
        }
    }
}
