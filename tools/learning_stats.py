#!/usr/bin/env python3
"""The learning experiment's statistics (issue 12), from the runs' eval_problems.jsonl.

Each arm is a run directory and a step (its final evaluation; step 0 is the untrained team). Per arm:
accuracy = mean over problems of the fraction of its samples that are correct (avg@k), with the standard
error over problems. Between arms: the paired difference on the same problems, its mean and a 95 % interval
(mean +- 1.96 standard errors of the per-problem differences; n >= 300 problems, so the normal quantile).

Usage: learning_stats.py --dataset test --arm base=RUN:STEP --arm mappa=RUN:STEP --arm outcome=RUN:STEP
         [--out learning.json] [--meta key=value ...]
"""
import argparse
import json
import math
import sys


def load(run_dir, step, dataset):
    """{problem id: [correct, ...]} of one evaluation."""
    out = {}
    with open(f"{run_dir}/eval_problems.jsonl") as f:
        for n, line in enumerate(f, 1):
            r = json.loads(line)
            if r["dataset"] == dataset and r["step"] == step:
                if r["id"] in out:
                    sys.exit(f"{run_dir}: problem {r['id']} appears twice at step {step} (line {n})")
                out[r["id"]] = r["correct"]
    if not out:
        sys.exit(f"{run_dir}: no evaluation of {dataset} at step {step}")
    return out


def mean_se(xs):
    n = len(xs)
    m = sum(xs) / n
    var = sum((x - m) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--arm", action="append", required=True, help="NAME=RUN_DIR:STEP")
    p.add_argument("--out")
    p.add_argument("--meta", action="append", default=[], help="KEY=VALUE copied into the JSON (numbers parsed)")
    a = p.parse_args()
    arms = {}
    for spec in a.arm:
        name, rest = spec.split("=", 1)
        run, step = rest.rsplit(":", 1)
        arms[name] = load(run, int(step), a.dataset)
    ids = sorted(next(iter(arms.values())))
    for name, res in arms.items():
        if sorted(res) != ids:
            sys.exit(f"arm {name} was evaluated on other problems than the first arm")
    per = {name: [sum(res[i]) / len(res[i]) for i in ids] for name, res in arms.items()}
    result = {"arms": {}}
    print(f"{'arm':<10} {'acc':>7} {'se':>7} {'n':>5}")
    for name, xs in per.items():
        m, se = mean_se(xs)
        k = max(len(arms[name][i]) for i in ids)
        result["arms"][name] = {"acc": m, "se": se, "n": len(xs), "k": k}
        print(f"{name:<10} {m:7.3f} {se:7.3f} {len(xs):5d}")
    names = list(per)
    for x in names[1:]:
        for y in names[: names.index(x)]:
            d = [u - v for u, v in zip(per[x], per[y])]
            m, se = mean_se(d)
            result[f"diff_{x}_{y}"] = {"mean": m, "se": se, "ci95": [m - 1.96 * se, m + 1.96 * se]}
            print(f"{x} - {y}: {m:+.3f}, 95 % interval [{m - 1.96 * se:+.3f}, {m + 1.96 * se:+.3f}]")
    for kv in a.meta:
        k, v = kv.split("=", 1)
        try:
            v = json.loads(v)
        except ValueError:
            pass
        result[k] = v
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
