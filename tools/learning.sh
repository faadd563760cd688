#!/usr/bin/env bash
# The learning experiment (issue 12; LEARNING.md has the design, the numbers and the verdict): does MAPPA
# teach? Three arms on the same generated arithmetic problems and the same seeds, each a MathChat team of
# three SmolLM2-135M-Instruct agents (tools/learning.toml):
#   base     the untrained team                                   (mappa eval --config)
#   outcome  trained on outcome-only rewards, 10 x correctness     (rl.reward = "outcome")
#   mappa    trained on the rule-based process coach's per-action scores
# then per-arm accuracy with standard errors and paired differences with 95 % intervals
# (tools/learning_stats.py), written to benches/results/learning.json when SPLIT=test.
#
# Settings are chosen on the validation split (SPLIT=valid); the test split is evaluated once, at the end
# of each arm. Rerunning resumes: a finished arm is skipped, an interrupted one resumes from its checkpoint.
# Knobs (environment): OUT (runs/learning), SPLIT (test | valid), STEPS (10), N (problems evaluated: 300),
# ARMS ("base outcome mappa"), and any extra --set overrides in SET (e.g. SET="rl.lr=1e-5").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/learning}
SPLIT=${SPLIT:-test}
STEPS=${STEPS:-10}
N=${N:-300}
ARMS=${ARMS:-base outcome mappa}
# The task's difficulty is `mappa tasks`' default (src/arith.rs, chosen on the validation split: LEARNING.md).
TASK_KNOBS=(--seed 2026)

start=$(date +%s)
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/mappa
model=${MAPPA_HOME:-$HOME/.cache/mappa}/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$model" ] || { echo "learning.sh: $model is missing: run bash tools/setup.sh first" >&2; exit 1; }
tasks=$OUT/tasks
mkdir -p "$tasks"
"$bin" tasks --out "$tasks" --train 2000 --valid 300 --test 300 "${TASK_KNOBS[@]}"
head -n "$N" "$tasks/$SPLIT.jsonl" > "$tasks/$SPLIT-$N.jsonl"

sets=(--set "run.base_model=$model" --set "data.train=$tasks/train.jsonl" --set "data.eval=[\"$tasks/$SPLIT-$N.jsonl\"]"
      --set "run.steps=$STEPS" --set "rl.eval_every=$STEPS" --set "rl.checkpoint_every=$STEPS")
for s in ${SET:-}; do sets+=(--set "$s"); done
dataset=$SPLIT-$N

# Whether run directory $1 holds its evaluation of $dataset at step $2.
evaluated() { [ -f "$1/eval_problems.jsonl" ] && grep -q "\"dataset\":\"$dataset\".*\"step\":$2[,}]" "$1/eval_problems.jsonl"; }

arm_specs=()
for arm in $ARMS; do
  dir=$OUT/$SPLIT-$arm
  case $arm in
    base)
      evaluated "$dir" 0 || { rm -rf "$dir"; "$bin" eval --config tools/learning.toml "${sets[@]}" --set "run.dir=$dir"; }
      arm_specs+=(--arm "base=$dir:0") ;;
    outcome|mappa)
      reward=coach; [ "$arm" = outcome ] && reward=outcome
      if ! evaluated "$dir" "$STEPS"; then
        if [ -f "$dir/config.toml" ]; then "$bin" train --resume "$dir"
        else "$bin" train --config tools/learning.toml "${sets[@]}" --set "rl.reward=$reward" --set "run.dir=$dir"; fi
      fi
      arm_specs+=(--arm "$arm=$dir:$STEPS") ;;
    *) echo "learning.sh: unknown arm $arm" >&2; exit 1 ;;
  esac
done

out_json=()
[ "$SPLIT" = test ] && out_json=(--out benches/results/learning.json)
python3 tools/learning_stats.py --dataset "$dataset" "${arm_specs[@]}" "${out_json[@]}" \
  --meta "task=arith word problems (mappa tasks ${TASK_KNOBS[*]}: 1-2 operations, magnitude 10)" --meta "model=SmolLM2-135M-Instruct (Q4_1 GGUF, f32 compute)" \
  --meta "steps=$STEPS" --meta "commit=$(git rev-parse --short HEAD)" --meta "date=$(date -u +%F)" \
  --meta "wall_s=$(( $(date +%s) - start ))"
