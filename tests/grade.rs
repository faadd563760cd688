//! Tests for the rule-based math grader (`mappa::grade`): hand-written unit cases, a no-panic sweep
//! over malformed input, the avg@k / pass@k metrics, and a sweep over every gold answer in
//! `../shared/data/math/*.jsonl` (self-equivalence, boxed responses, common rewrites, and rejection of
//! a different problem's answer).

use mappa::grade::{avg_at_k, equivalent, extract_answer, extract_boxed, grade, normalize, pass_at_k};
use std::path::{Path, PathBuf};

const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/math");

fn eq(pred: &str, gold: &str) -> bool {
    equivalent(pred, gold)
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

#[test]
fn boxed_handles_nested_braces() {
    assert_eq!(extract_boxed("so \\boxed{\\frac{1}{2}}.").as_deref(), Some("\\frac{1}{2}"));
    assert_eq!(extract_boxed("$\\boxed{\\{1, 2\\}}$").as_deref(), Some("\\{1, 2\\}"));
    assert_eq!(
        extract_boxed("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}").as_deref(),
        Some("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}")
    );
}

#[test]
fn boxed_inside_box_is_unwrapped() {
    assert_eq!(extract_boxed("\\boxed{\\boxed{5}}").as_deref(), Some("5"));
    assert_eq!(extract_boxed("\\boxed{ \\fbox{ 7 } }").as_deref(), Some("7"));
    // A box that is only part of the content stays: the outer box is the answer.
    assert_eq!(extract_boxed("\\boxed{x=\\boxed{3}}").as_deref(), Some("x=\\boxed{3}"));
}

#[test]
fn last_box_wins() {
    assert_eq!(extract_boxed("first \\boxed{3}, then \\boxed{4}.").as_deref(), Some("4"));
    assert_eq!(extract_boxed("\\boxed{3} and \\fbox{12}").as_deref(), Some("12"));
    assert_eq!(extract_boxed("\\boxed{1} so $\\boxed 7$.").as_deref(), Some("7"));
    assert_eq!(extract_boxed("\\boxed 42 is it").as_deref(), Some("42"));
    assert!(grade("I think \\boxed{5}. Wait, no: \\boxed{6}", "6", false));
    assert!(!grade("I think \\boxed{5}. Wait, no: \\boxed{6}", "5", false));
}

#[test]
fn boxed_needs_a_whole_command() {
    assert_eq!(extract_boxed("\\boxedx{3}"), None);
    assert_eq!(extract_boxed("no box here, 5"), None);
    assert_eq!(extract_boxed("\\boxed{}"), None);
    assert_eq!(extract_boxed("\\boxed{  }"), None);
}

#[test]
fn fallback_takes_last_number() {
    assert_eq!(extract_answer("so 3 apples cost 1,234 dollars.", true).as_deref(), Some("1234"));
    assert_eq!(extract_answer("so 3 apples cost 1,234 dollars.", false), None);
    assert_eq!(extract_answer("the change is -2.50 now", true).as_deref(), Some("-2.50"));
    assert_eq!(extract_answer("probability 3/4", true).as_deref(), Some("3/4"));
    assert_eq!(extract_answer("x-3 and then 7", true).as_deref(), Some("7"));
    assert_eq!(extract_answer("it is 5-3", true).as_deref(), Some("3"));
    assert_eq!(extract_answer("value .5", true).as_deref(), Some(".5"));
    assert_eq!(extract_answer("1,2,3", true).as_deref(), Some("3"));
    assert_eq!(extract_answer("no digits at all", true), None);
    // A box beats the fallback even when a number comes later.
    assert_eq!(extract_answer("\\boxed{9} (checked with 10 trials)", true).as_deref(), Some("9"));
    assert!(grade("Total: 18 dollars", "18", true));
    assert!(!grade("Total: 18 dollars", "18", false));
    assert!(grade("so she pays $1,000.", "1000", true));
}

// ---------------------------------------------------------------------------------------------
// Normalisation and equivalence
// ---------------------------------------------------------------------------------------------

#[test]
fn normalize_examples() {
    assert_eq!(normalize(" $\\dfrac{3}{4}$. "), "\\frac{3}{4}");
    assert_eq!(normalize("\\frac12"), "\\frac{1}{2}");
    assert_eq!(normalize("\\frac{270}7\\text{ degrees}"), "\\frac{270}{7}");
    assert_eq!(normalize("\\tfrac{\\sqrt3}2"), "\\frac{\\sqrt{3}}{2}");
    assert_eq!(normalize("\\left( 3, \\frac{\\pi}{2} \\right)"), "(3,\\frac{\\pi}{2})");
    assert_eq!(normalize("10,\\!080"), "10080");
    assert_eq!(normalize("11,\\! 111,\\! 111,\\! 100"), "11111111100");
    assert_eq!(normalize("\\$32,\\!348"), "32348");
    assert_eq!(normalize("2.50"), "2.5");
    assert_eq!(normalize("3.0"), "3");
    assert_eq!(normalize(".0000672"), "0.0000672");
    assert_eq!(normalize("x = 5"), "5");
    assert_eq!(normalize("4210_{5}"), "4210_5");
    assert_eq!(normalize("864 \\mbox{ inches}^2"), "864");
    assert_eq!(normalize("\\text{(C)}"), "C");
    assert_eq!(normalize("1.85\\ \\text{USD}"), "1.85");
}

#[test]
fn units_degrees_percent() {
    assert!(eq("5 cm", "5"));
    assert!(eq("10 dollars", "10"));
    assert!(eq("60 mph", "60"));
    assert!(eq("60mph", "60"));
    assert!(eq("36 square units", "36"));
    assert!(eq("34\\text{ sq. units}", "34"));
    assert!(eq("15\\mbox{ cm}^2", "15"));
    assert!(eq("5.4 \\text{ cents}", "5.4"));
    assert!(eq("16\\text{ daps}", "16"));
    assert!(eq("90^\\circ", "90"));
    assert!(eq("90^{\\circ}", "90"));
    assert!(eq("90°", "90"));
    assert!(eq("90 degrees", "90"));
    assert!(eq("50\\%", "50"));
    assert!(eq("50%", "50"));
    assert!(eq("\\$18.90", "18.9"));
    // Documented: percent is dropped, not divided by 100.
    assert!(!eq("50\\%", "0.5"));
    // Unit words only go after a number; a unit word alone or a name stays.
    assert_eq!(normalize("\\text{inches}"), "inches");
    assert!(!eq("5 cm", "6"));
    assert!(eq("\\text{Evelyn}", "Evelyn"));
    assert!(!eq("\\text{Evelyn}", "\\text{Navin}"));
}

#[test]
fn numbers_fractions_and_signs() {
    assert!(eq("042", "42"));
    assert!(eq("336^\\circ", "336"));
    assert!(eq("\\dfrac{3}{4}", "3/4"));
    assert!(eq("0.75", "\\frac34"));
    assert!(eq("\\frac 59", "\\frac{5}{9}"));
    assert!(eq("1\\frac{4}{5}", "\\frac{9}{5}"));
    assert!(eq("137 \\frac{1}{2}", "137.5"));
    assert!(eq("\\frac{1}{3}", "0.3333333333"));
    assert!(!eq("\\frac{1}{3}", "0.333"));
    assert!(eq("-5", "-5.0"));
    assert!(!eq("-5", "5"));
    assert!(eq("-0", "0"));
    assert!(eq("-\\frac{1}{2}", "-0.5"));
    assert!(eq("k = \\frac{-33}{2}", "-\\frac{33}{2}"));
    assert!(eq("-35/9", "-\\frac{35}{9}"));
    assert!(!eq("\\frac{1}{2}", "\\frac{1}{3}"));
    assert!(eq("1,000", "1000"));
    assert!(!eq("1,00", "100"));
    assert!(eq("+7", "7"));
    // Integers compare exactly, however long.
    assert!(eq("123456789012345678901234567890", "0123456789012345678901234567890"));
    assert!(!eq("123456789012345678901234567890", "123456789012345678901234567891"));
    assert!(!eq(&"9".repeat(400), "1.5"));
    // Division by zero is not a number.
    assert!(!eq("1/0", "\\frac{2}{0}"));
}

#[test]
fn symbolic_answers_compare_as_strings() {
    assert!(eq("3\\sqrt{13}", "3 \\sqrt{13}"));
    assert!(eq("11\\sqrt2", "11\\sqrt{2}"));
    // LaTeX reads `\sqrt13` as `\sqrt{1}3`.
    assert!(!eq("\\sqrt13", "\\sqrt{13}"));
    assert!(eq("\\frac{\\sqrt3}{2}", "\\dfrac{\\sqrt{3}}{2}"));
    assert!(!eq("2\\pi", "6.283185307"));
    assert!(eq("y = 2x + 3", "2x+3"));
    assert!(!eq("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z + 4"));
    assert!(eq("6 - 5i", "6-5i"));
    assert!(!eq("6 - 5i", "6+5i"));
    assert!(eq("\\text{(C)}", "C"));
    assert!(!eq("\\text{(C)}", "\\text{(B)}"));
}

#[test]
fn intervals_and_tuples() {
    assert!(eq("(1, 2)", "(1,2)"));
    assert!(!eq("(1, 2)", "(2, 1)"));
    assert!(!eq("[1, 2)", "(1, 2)"));
    assert!(!eq("[1, 2)", "[1, 2]"));
    assert!(eq("[1, 2)", "[1.0, \\frac{4}{2})"));
    assert!(eq("(-\\infty, 3]", "\\left(-\\infty,3\\right]"));
    assert!(!eq("(-\\infty, 3]", "(-\\infty, 3)"));
    assert!(eq("x \\in [-2,7]", "[-2, 7]"));
    assert!(eq("(0,9) \\cup (9,36)", "(0, 9)\\cup(9, 36)"));
    assert!(eq("(0,9) \\cup (9,36)", "(9,36) \\cup (0,9)"));
    assert!(!eq("(0,9) \\cup (9,36)", "(0,9] \\cup (9,36)"));
    assert!(!eq("(0,9) \\cup (9,36)", "(0,9)"));
    assert!(eq("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"));
    assert!(eq("(6,31,-1)", "(6, 31, -1.0)"));
    assert!(!eq("(6,31,-1)", "(6,31)"));
    // A tuple is not a bare list.
    assert!(!eq("(1,2)", "1,2"));
    assert!(!eq("(a+5)(b+2)", "(b+2)(a+5)"));
}

#[test]
fn sets_and_lists_ignore_order() {
    assert!(eq("\\{1,2\\}", "\\{2, 1\\}"));
    assert!(eq("\\{1\\pm\\sqrt{5},-2\\}", "\\{-2, 1\\pm\\sqrt{5}\\}"));
    assert!(!eq("\\{1,2\\}", "\\{1,3\\}"));
    assert!(!eq("\\{1,2\\}", "\\{1,2,2\\}"));
    assert!(eq("1,-2", "-2, 1"));
    assert!(eq("3, 5, 7", "7,3,5"));
    assert!(!eq("3, 5, 7", "3, 5"));
    assert!(eq("2, 3, \\text{ and } 4", "4,3,2"));
    assert!(eq("6, 8\\text{, and }10", "6,8,10"));
    assert!(eq("-12 \\text{ or } -30", "-30, -12"));
    assert!(!eq("-12 \\text{ or } -30", "-12"));
}

#[test]
fn matrices_compare_cell_by_cell() {
    let gold = "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}";
    assert!(eq("\\begin{pmatrix}-\\frac13\\\\ \\frac{2}{3}\\\\ \\frac{5}{3}\\end{pmatrix}", gold));
    assert!(eq("\\begin{bmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{bmatrix}", gold));
    assert!(!eq("\\begin{pmatrix} -1/3 & 2/3 & 5/3 \\end{pmatrix}", gold));
    assert!(!eq("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 4/3 \\end{pmatrix}", gold));
}

#[test]
fn malformed_input_is_rejected_without_panic() {
    assert_eq!(extract_boxed("the answer is \\boxed{"), None);
    assert_eq!(extract_boxed("the answer is \\boxed"), None);
    assert_eq!(extract_boxed("\\boxed{\\frac{1}{2}"), None);
    // A truncated last box means no final answer, even after a complete earlier one.
    assert_eq!(extract_boxed("\\boxed{5} then \\boxed{6"), None);
    assert_eq!(extract_answer("\\boxed{", true), None);
    assert!(!grade("\\boxed{", "5", false));
    assert!(!grade("\\boxed{5", "5", false));
    assert!(!grade("", "5", true));
    assert!(!eq("", ""));
    assert!(!eq("", "5"));
    assert!(!eq("$$", "5"));
    assert!(!eq("   ", "   "));
}

#[test]
fn fuzz_like_inputs_never_panic() {
    let deep_open = "{".repeat(5000);
    let deep_box = "\\boxed{".repeat(2000) + &"}".repeat(2000);
    let deep_text = "\\text{".repeat(300) + "a" + &"}".repeat(300);
    let deep_frac = "\\frac{".repeat(500) + "1" + &"}{2}".repeat(500);
    let deep_paren = "(".repeat(3000) + "1,2" + &")".repeat(3000);
    let long_list = vec!["1"; 3000].join(",");
    let huge = "9".repeat(5000);
    let inputs: Vec<String> = [
        "",
        " ",
        "{",
        "}",
        "}{",
        "}}}{{{",
        "\\",
        "\\\\",
        "\\boxed",
        "\\boxed{",
        "\\boxed{}}",
        "\\fbox",
        "\\frac",
        "\\frac{",
        "\\frac{1}",
        "\\frac{1}{",
        "\\frac12}",
        "\\sqrt",
        "\\sqrt[",
        "^{",
        "_{}",
        "^",
        "\\text{",
        "\\text{}",
        "\\left",
        "\\right.",
        "$",
        "\\$",
        "%",
        "\\%",
        "°",
        "é√∞",
        "√2",
        "1/0",
        "0/0",
        "\\frac{1}{0}",
        "\\frac{0}{0}",
        "-",
        "+",
        ".",
        "..",
        "1.",
        "-.",
        "1e400",
        "1,000,00",
        ",,,",
        "(",
        "[)",
        "(]",
        "()",
        "[]",
        "\\{",
        "\\}",
        "\\{\\}",
        "x=",
        "=5",
        "x==5",
        "\\in",
        "x\\in",
        "5\\%\\%",
        "1,\\!",
        "\\!",
        "\\ ",
        "\\boxed 5$",
        "\\boxed{\\}",
        "\\boxed{\\{}",
        "\\cup",
        "(1,2)\\cup",
        "\\begin{pmatrix}",
        "\\begin{pmatrix}\\end{pmatrix}",
        "& \\\\ &",
        "0.",
        "00",
        "-0.0",
        "ß\\boxed{é}",
        "5 cm cm cm",
        "cm",
        "\\text{cm}",
        "1\\frac{}{}",
        "\\frac{-}{-}",
        "--5",
        "+-5",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([deep_open, deep_box, deep_text, deep_frac, deep_paren, long_list, huge])
    .collect();
    for a in &inputs {
        let _ = normalize(a);
        let _ = extract_boxed(a);
        let _ = extract_answer(a, true);
        for b in &inputs {
            let _ = equivalent(a, b);
            let _ = grade(a, b, true);
        }
    }
    // Sanity: a few of these have definite answers.
    assert_eq!(extract_boxed(&("\\boxed{".repeat(2000) + &"}".repeat(2000))), None);
    assert!(!eq("1/0", "1/0") || normalize("1/0") == "1/0");
    assert!(!eq("\\frac{0}{0}", "0"));
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn binomial(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

#[test]
fn avg_at_k_hand_computed() {
    let (t, f) = (true, false);
    // Per-problem means 0.5 and 1.0: mean 0.75; sample sd = sqrt(2 * 0.25^2 / 1); SE = sd / sqrt(2) = 0.25.
    let (mean, se) = avg_at_k(&[vec![t, f, t, f], vec![t, t, t, t]]);
    assert!(close(mean, 0.75) && close(se, 0.25), "{mean} {se}");
    // Problems are weighted equally, not samples: (1/1 + 0/3) / 2.
    let (mean, _) = avg_at_k(&[vec![t], vec![f, f, f]]);
    assert!(close(mean, 0.5));
    assert_eq!(avg_at_k(&[vec![t, t]]), (1.0, 0.0));
    assert_eq!(avg_at_k(&[]), (0.0, 0.0));
    assert_eq!(avg_at_k(&[vec![]]), (0.0, 0.0));
}

#[test]
fn pass_at_k_hand_computed() {
    let (t, f) = (true, false);
    // n=4, c=2, k=2: 1 - C(2,2)/C(4,2) = 5/6.
    let (p, se) = pass_at_k(&[vec![t, f, t, f]], 2);
    assert!(close(p, 5.0 / 6.0) && se == 0.0, "{p}");
    // With an all-wrong problem: scores 5/6 and 0, mean 5/12, SE = (5/12 * sqrt 2) / sqrt 2 = 5/12.
    let (p, se) = pass_at_k(&[vec![t, t, f, f], vec![f, f, f, f]], 2);
    assert!(close(p, 5.0 / 12.0) && close(se, 5.0 / 12.0), "{p} {se}");
    // pass@1 is avg@k.
    let data = [vec![t, f, f], vec![t, t, f], vec![f, f, f], vec![t, t, t]];
    let (p1, se1) = pass_at_k(&data, 1);
    let (avg, se_avg) = avg_at_k(&data);
    assert!(close(p1, avg) && close(se1, se_avg));
    // n - c < k: some correct sample is always drawn.
    assert_eq!(pass_at_k(&[vec![t, t, t, f]], 2).0, 1.0);
    // k > n is clamped to n; k = 0 and empty problems score 0.
    assert_eq!(pass_at_k(&[vec![t, f]], 5).0, 1.0);
    assert_eq!(pass_at_k(&[vec![f, f]], 5).0, 0.0);
    assert_eq!(pass_at_k(&[vec![t, f]], 0).0, 0.0);
    assert_eq!(pass_at_k(&[vec![]], 1).0, 0.0);
}

#[test]
fn pass_at_k_matches_the_binomial_formula() {
    for n in 1..=16 {
        for c in 0..=n {
            let samples: Vec<bool> = (0..n).map(|i| i < c).collect();
            for k in 1..=n {
                let want = 1.0 - binomial(n - c, k) / binomial(n, k);
                let got = pass_at_k(std::slice::from_ref(&samples), k).0;
                assert!((got - want).abs() < 1e-9, "n={n} c={c} k={k}: {got} vs {want}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Every gold answer in the shared data
// ---------------------------------------------------------------------------------------------

// No gold answer is excluded. One is a data quirk the grader cannot turn into a usable gold:
// `mappa_aime_1983_2024.jsonl` has "080 or 081 (both were accepted)" (AIME 1985). It passes every
// check below as a string (and as a two-item list `080,081(...)`), but a model answering `80` or `81`
// is graded wrong against it; the evaluator should map that record's gold to {80, 81} itself.

/// Distinct gold answers that the grader (rightly) treats as equal although their normalised strings
/// differ; the "wrong answer" sweep skips a pair only if it is listed here.
const KNOWN_EQUAL: &[(&str, &str)] = &[];

fn gold_answers(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
            v["answer"].as_str().unwrap_or_else(|| panic!("{}:{}: no string answer", path.display(), i + 1)).to_string()
        })
        .collect()
}

fn data_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(DATA_DIR)
        .unwrap_or_else(|e| panic!("{DATA_DIR}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
}

/// `-?\d+`
fn as_integer(g: &str) -> Option<i128> {
    let digits = g.strip_prefix('-').unwrap_or(g);
    (!digits.is_empty() && digits.len() < 30 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| g.parse().ok())
        .flatten()
}

/// `-?\frac{a}{b}` with plain integers a, b: (sign, a, b).
fn as_fraction(g: &str) -> Option<(&str, &str, &str)> {
    let (sign, body) = g.strip_prefix('-').map_or(("", g), |b| ("-", b));
    let (a, b) = body.strip_prefix("\\frac{")?.strip_suffix('}')?.split_once("}{")?;
    let int = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (int(a) && int(b)).then_some((sign, a, b))
}

/// `1234567` -> `1,234,567`.
fn with_commas(n: i128) -> String {
    let digits = n.unsigned_abs().to_string();
    let groups: Vec<&str> = digits.as_bytes().rchunks(3).rev().map(|g| std::str::from_utf8(g).unwrap_or("?")).collect();
    let out = groups.join(",");
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Spaces removed except between two letters or after a backslash (where they carry meaning).
fn squeeze_spaces(g: &str) -> String {
    let chars: Vec<char> = g.chars().collect();
    let keep = |i: usize| {
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1);
        prev == Some('\\')
            || (prev.is_some_and(|c| c.is_ascii_alphabetic()) && next.is_some_and(|c| c.is_ascii_alphabetic()))
    };
    chars.iter().enumerate().filter(|&(i, c)| *c != ' ' || keep(i)).map(|(_, c)| c).collect()
}

/// Common ways a model writes the same answer.
fn rewrites(g: &str) -> Vec<String> {
    let mut out = vec![format!("  {g}  "), format!("${g}$"), squeeze_spaces(g)];
    if g.contains(',') {
        out.push(g.replace(',', ", "));
    }
    if let Some(n) = as_integer(g) {
        out.extend([format!("{g}.0"), format!("\\text{{{g}}}"), format!("{n}"), format!("{g}.")]);
        if n.abs() >= 1000 {
            out.push(with_commas(n));
            out.push(format!("${}$", with_commas(n)));
        }
        if (0..100).contains(&n) {
            out.push(format!("{n:03}"));
        }
    }
    if let Some((sign, a, b)) = as_fraction(g) {
        out.extend([
            format!("{sign}\\dfrac{{{a}}}{{{b}}}"),
            format!("{sign}\\tfrac{{{a}}}{{{b}}}"),
            format!("{sign}{a}/{b}"),
            format!("{sign}\\frac {{{a}}} {{{b}}}"),
            format!("\\frac{{{sign}{a}}}{{{b}}}"),
        ]);
        if a.len() == 1 && b.len() == 1 {
            out.push(format!("{sign}\\frac{a}{b}"));
        }
    }
    let is_decimal = g.split_once('.').is_some_and(|(i, f)| {
        i.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit())
            && !f.is_empty()
            && f.bytes().all(|b| b.is_ascii_digit())
    });
    if is_decimal {
        out.push(format!("{g}0"));
    }
    out
}

#[derive(Default, Debug)]
struct Counts {
    records: usize,
    self_equal: usize,
    boxed: usize,
    rewrites: usize,
    wrong_checked: usize,
    wrong_skipped_equal: usize,
}

fn check_file(golds: &[String], failures: &mut Vec<String>) -> Counts {
    let mut counts = Counts { records: golds.len(), ..Counts::default() };
    let norms: Vec<String> = golds.iter().map(|g| normalize(g)).collect();
    for (i, g) in golds.iter().enumerate() {
        if equivalent(g, g) {
            counts.self_equal += 1;
        } else {
            failures.push(format!("not equivalent to itself: {g:?}"));
        }
        let response = format!("... so the answer is \\boxed{{{g}}}.");
        if grade(&response, g, false) {
            counts.boxed += 1;
        } else {
            failures.push(format!("boxed gold not graded correct: {g:?}"));
        }
        for r in rewrites(g) {
            let ok = grade(&format!("Final answer: \\boxed{{{r}}}"), g, false) && equivalent(&r, g);
            counts.rewrites += usize::from(ok);
            if !ok {
                failures.push(format!("rewrite {r:?} of {g:?} not graded correct"));
            }
        }
        let other = (1..golds.len()).map(|d| (i + d) % golds.len()).find(|&j| norms[j] != norms[i]);
        if let Some(j) = other {
            let h = &golds[j];
            if KNOWN_EQUAL.iter().any(|&(a, b)| (a, b) == (g, h) || (b, a) == (g, h)) {
                counts.wrong_skipped_equal += 1;
                continue;
            }
            counts.wrong_checked += 1;
            if equivalent(h, g) || equivalent(g, h) || grade(&format!("\\boxed{{{h}}}"), g, false) {
                failures.push(format!("{h:?} accepted for gold {g:?}"));
            }
        }
    }
    counts
}

#[test]
fn every_gold_answer_in_shared_data() {
    let files = data_files();
    assert!(files.len() >= 10, "expected the math data files in {DATA_DIR}, found {}", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let golds = gold_answers(path);
        assert!(!golds.is_empty(), "{}: no records", path.display());
        let counts = check_file(&golds, &mut failures);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        println!("{name}: {counts:?}");
        assert_eq!(counts.self_equal, counts.records, "{name}");
        assert!(counts.rewrites >= counts.records, "{name}: too few rewrites checked");
        assert!(
            counts.wrong_checked * 10 >= counts.records * 9,
            "{name}: only {} of {} records compared against a different answer",
            counts.wrong_checked,
            counts.records
        );
    }
    let shown: Vec<&String> = failures.iter().take(40).collect();
    assert!(failures.is_empty(), "{} failures, first ones:\n{shown:#?}", failures.len());
}
