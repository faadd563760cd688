//! Arithmetic word problems with exact integer answers (issue 12): a task set that a small model can move on,
//! generated from a seed, so train, validation and test sets are reproducible and disjoint.
//!
//! A problem is a story about one quantity: it starts at a number, then `steps` operations change it (add,
//! take away, multiply, share equally), and the question asks for the result. Operands stay within
//! `magnitude`, every intermediate value is a non-negative integer (a subtraction never goes below zero, a
//! division is always exact), and the answer is that last value. Three story families word the same
//! operations differently (items a person has, money in a jar, a stock of goods), so a model cannot learn one
//! sentence shape. Problem `i` of split `s` is a pure function of (seed, s, i); a problem whose text also
//! occurs in an earlier split is drawn again, so no test text is ever trained on.
use crate::data::derive_seed;
use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The difficulty `mappa tasks`, the quickstart and the learning experiment use: the base MathChat team of
/// three SmolLM2-135M-Instruct agents scores 10-40 % on it (17 % on 60 validation problems; LEARNING.md says
/// how it was chosen).
pub const DEFAULT_MIN_STEPS: usize = 1;
pub const DEFAULT_MAX_STEPS: usize = 2;
pub const DEFAULT_MAGNITUDE: u64 = 10;

/// Knobs of the generator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArithConfig {
    pub seed: u64,
    /// Operations per problem, drawn uniformly from this inclusive range.
    pub min_steps: usize,
    pub max_steps: usize,
    /// Largest starting value and operand of an addition or subtraction; factors and divisors stay <= 9.
    pub magnitude: u64,
}

/// One task in the project's task format (`problem`, `answer`; `id`), plus how it was made.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArithTask {
    pub id: String,
    pub problem: String,
    pub answer: String,
    pub steps: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Add(u64),
    Sub(u64),
    Mul(u64),
    Div(u64),
}

/// How one family words a story: the opening, each operation, and the question.
struct Family {
    start: fn(&Cast, u64) -> String,
    op: fn(&Cast, Op) -> String,
    question: fn(&Cast) -> String,
}

/// The names and things a story is about.
struct Cast {
    name: &'static str,
    thing: &'static str,
}

const NAMES: [&str; 12] =
    ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jack", "Kemi", "Liam"];
const THINGS: [&str; 10] =
    ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells", "stamps", "beads"];

const FAMILIES: [Family; 3] = [
    Family {
        start: |c, a| format!("{} has {a} {}.", c.name, c.thing),
        op: |c, op| match op {
            Op::Add(x) => format!("Then {} gets {x} more {}.", c.name, c.thing),
            Op::Sub(x) => format!("Then {} gives away {x} {}.", c.name, c.thing),
            Op::Mul(x) => format!("Then the number of {} that {} has becomes {x} times as large.", c.thing, c.name),
            Op::Div(x) => {
                format!("Then {} splits the {} into {x} equal groups and keeps only one group.", c.name, c.thing)
            }
        },
        question: |c| format!("How many {} does {} have now?", c.thing, c.name),
    },
    Family {
        start: |c, a| format!("A jar holds {a} dollars that {} saved.", c.name),
        op: |c, op| match op {
            Op::Add(x) => format!("{} puts {x} more dollars into the jar.", c.name),
            Op::Sub(x) => format!("{} takes {x} dollars out of the jar to buy {}.", c.name, c.thing),
            Op::Mul(x) => format!("A bank offer makes the money in the jar {x} times as much."),
            Op::Div(x) => format!("{} splits the money in the jar into {x} equal parts and keeps one part.", c.name),
        },
        question: |_| "How many dollars are in the jar now?".to_string(),
    },
    Family {
        start: |c, a| format!("A shop has {a} boxes of {} in stock.", c.thing),
        op: |_, op| match op {
            Op::Add(x) => format!("A delivery brings {x} more boxes."),
            Op::Sub(x) => format!("Customers buy {x} boxes."),
            Op::Mul(x) => format!("The owner orders enough to make the stock {x} times as large."),
            Op::Div(x) => format!("The stock is split equally between {x} shops, and this shop keeps one part."),
        },
        question: |_| "How many boxes does the shop have now?".to_string(),
    },
];

impl ArithConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=8).contains(&self.min_steps) && self.min_steps <= self.max_steps && self.max_steps <= 8,
            "steps must satisfy 1 <= min <= max <= 8, got {}..={}",
            self.min_steps,
            self.max_steps
        );
        ensure!(
            (10..=1_000_000).contains(&self.magnitude),
            "magnitude must be in [10, 1000000], got {}",
            self.magnitude
        );
        Ok(())
    }

    /// Problem `index` of split `split` (0, 1, 2, ...), a pure function of the seed, split and index.
    fn draw(&self, split: u64, index: u64, attempt: u64) -> (String, u64, usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[self.seed, split, index, attempt]));
        let family = &FAMILIES[rng.random_range(0..FAMILIES.len())];
        let cast =
            Cast { name: NAMES[rng.random_range(0..NAMES.len())], thing: THINGS[rng.random_range(0..THINGS.len())] };
        let steps = rng.random_range(self.min_steps..=self.max_steps);
        let mut value = rng.random_range(2..=self.magnitude);
        let mut text = vec![(family.start)(&cast, value)];
        for _ in 0..steps {
            let op = next_op(&mut rng, value, self.magnitude);
            value = match op {
                Op::Add(x) => value + x,
                Op::Sub(x) => value - x,
                Op::Mul(x) => value * x,
                Op::Div(x) => value / x,
            };
            text.push((family.op)(&cast, op));
        }
        text.push((family.question)(&cast));
        (text.join(" "), value, steps)
    }

    /// `count` problems of split `split`; texts in `taken` (earlier splits) are drawn again, and every text
    /// drawn is added to it.
    pub fn split(&self, name: &str, split: u64, count: usize, taken: &mut HashSet<String>) -> Result<Vec<ArithTask>> {
        self.validate()?;
        let mut out = Vec::with_capacity(count);
        for i in 0..count as u64 {
            let mut attempt = 0;
            let (problem, answer, steps) = loop {
                let drawn = self.draw(split, i, attempt);
                if taken.insert(drawn.0.clone()) {
                    break drawn;
                }
                attempt += 1;
                ensure!(attempt < 1000, "cannot draw {count} distinct problems with these settings");
            };
            out.push(ArithTask { id: format!("arith-{name}-{i:05}"), problem, answer: answer.to_string(), steps });
        }
        Ok(out)
    }

    /// Writes `dir/test.jsonl`, `valid.jsonl` and `train.jsonl` with `counts` problems each (in that order),
    /// disjoint; the test split first, so the other splits' sizes never change it. Returns each file and count.
    pub fn write_splits(&self, dir: &Path, counts: [usize; 3]) -> Result<Vec<(PathBuf, usize)>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut taken = HashSet::new();
        let mut written = Vec::new();
        for (split, (name, count)) in ["test", "valid", "train"].into_iter().zip(counts).enumerate() {
            let tasks = self.split(name, split as u64, count, &mut taken)?;
            let path = dir.join(format!("{name}.jsonl"));
            let lines: String =
                tasks.iter().map(|t| serde_json::to_string(t).map(|l| l + "\n")).collect::<Result<_, _>>()?;
            std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
            written.push((path, count));
        }
        Ok(written)
    }
}

/// An operation that keeps the value a non-negative integer within sight of `magnitude`: multiplication only
/// while the product stays below 10 x magnitude, exact division only by a divisor the value has.
fn next_op(rng: &mut ChaCha8Rng, value: u64, magnitude: u64) -> Op {
    let divisors: Vec<u64> = (2..=9).filter(|d| value % d == 0 && value / d >= 2).collect();
    let factors: Vec<u64> = (2..=9).filter(|f| value * f <= 10 * magnitude).collect();
    loop {
        match rng.random_range(0..4) {
            0 => return Op::Add(rng.random_range(1..=magnitude)),
            1 if value > 1 => return Op::Sub(rng.random_range(1..value.min(magnitude + 1))),
            2 if !factors.is_empty() => return Op::Mul(factors[rng.random_range(0..factors.len())]),
            3 if !divisors.is_empty() => return Op::Div(divisors[rng.random_range(0..divisors.len())]),
            _ => {}
        }
    }
}
