#!/usr/bin/env bash
# fuzz.sh: a bounded coverage-guided fuzz run of every input parser (fuzz/src/bin/*: GGUF, safetensors,
# config.json, tokenizer.json, the run config, task JSONL), with AFL++ through cargo-afl on the stable toolchain.
#   * installs the pinned cargo-afl once into $MAPPA_FUZZ_HOME (default ~/.cache/mappa-fuzz); its install builds
#     AFL++ and its runtime (under ~/.local/share/afl.rs), so a second run only builds the targets;
#   * builds the targets (CPU-only: no CUDA kernels, parsing does not need them) into $FUZZ_TARGET_DIR, default
#     $MAPPA_FUZZ_HOME/target: outside the checkout so that CI's fresh clone rebuilds only mappa and the targets,
#     not every dependency (a cold install and build took 8 to 18 minutes on this 2-core machine, shared with
#     other builds; a warm one, rebuilding mappa, one to two);
#   * runs each target, one at a time, for FUZZ_SECONDS (default 25) from its committed seeds in
#     fuzz/corpus/<target>/ with its dictionary fuzz/dict/<target>.dict; findings land in fuzz/out/<target>/;
#   * prints target / execs / paths / crashes / hangs, and exits non-zero when any target crashed (each crashing
#     input is re-run and its panic printed) or hung (an input AFL flagged that still runs past HANG_SECONDS when
#     re-run alone; one that finishes is reported as slow, not failed: a 2-core machine shared with builds
#     stalls now and then).
# FUZZ_TARGETS="gguf safetensors" runs only those. A finding is reproduced with
#   MAPPA_FUZZ_SHOW=1 ~/.cache/mappa-fuzz/target/release/<target> < fuzz/out/<target>/default/crashes/id:...
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_AFL_VERSION=0.17.1 # the `afl` crate in fuzz/Cargo.toml must be the same version
SECONDS_EACH="${FUZZ_SECONDS:-25}"
HANG_SECONDS="${HANG_SECONDS:-10}"
TIMEOUT_MS="${FUZZ_TIMEOUT_MS:-2000}" # AFL's per-input limit; parsing any seed takes well under 10 ms
MEM_MB="${FUZZ_MEM_MB:-4096}" # address-space limit: a length field turned into a huge allocation aborts (a crash)
TARGETS="${FUZZ_TARGETS:-gguf safetensors config_json tokenizer_json run_config tasks_jsonl}"
HOME_DIR="${MAPPA_FUZZ_HOME:-$HOME/.cache/mappa-fuzz}"
ROOT="$PWD"
TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME_DIR/target}"
OUT="$ROOT/fuzz/out"
log() { printf '[fuzz] %s\n' "$*" >&2; }

# ---- cargo-afl (its install builds AFL++ and the runtime for this rustc)
AFL_BIN="$HOME_DIR/cargo-afl-$CARGO_AFL_VERSION/bin"
export PATH="$AFL_BIN:$PATH"
if ! [ -x "$AFL_BIN/cargo-afl" ]; then
  log "installing cargo-afl $CARGO_AFL_VERSION into $HOME_DIR (builds AFL++; about a minute and a half)"
  cargo install --quiet --locked --version "$CARGO_AFL_VERSION" --root "$HOME_DIR/cargo-afl-$CARGO_AFL_VERSION" cargo-afl
fi
# `cargo afl fuzz` refuses to run when the runtime is missing for this rustc (a toolchain update); rebuild it then.
if [[ "$(cargo afl fuzz -h 2>&1 || true)" == *"runtime was not built"* ]]; then
  log "building the AFL++ runtime for $(rustc --version)"
  cargo afl config --build --force
fi

# ---- build the targets
log "building fuzz targets ($TARGETS)"
mkdir -p "$OUT"
no_cuda="$HOME_DIR/no-cuda-home" # build.rs finds no nvcc here: a CPU-only mappa, as the parsers need
mkdir -p "$no_cuda"
# mappa's dependencies at the versions the main lockfile pins (cargo adds the afl crate's own); a committed copy
# would go stale with every dependency mappa adds.
cp Cargo.lock fuzz/Cargo.lock
(cd fuzz && env -u NVCC -u CUDA_HOME -u CUDA_PATH -u REQUIRE_CUDA_KERNELS MAPPA_HOME="$no_cuda" \
  CARGO_TARGET_DIR="$TARGET_DIR" cargo afl build --release --quiet $(printf -- '--bin %s ' $TARGETS))

built_at=$SECONDS
log "ready in ${built_at}s (install and build)"

# ---- run each target for its bounded time
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 \
  AFL_FAST_CAL=1 AFL_NO_CRASH_README=1
scratch="$(mktemp -d "${TMPDIR:-/tmp}/mappa-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
export TMPDIR="$scratch" # the targets' scratch files (fuzz/src/lib.rs)

fail=0
rows=()
field() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$2" 2>/dev/null || true; }
for t in $TARGETS; do
  bin="$TARGET_DIR/release/$t"
  out="$OUT/$t"
  rm -rf "$out"
  log "$t: ${SECONDS_EACH}s"
  # -V bounds the run; timeout is the backstop should afl-fuzz itself not stop.
  set +e
  timeout -k 10 $((SECONDS_EACH + 120)) cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" -x "fuzz/dict/$t.dict" \
    -V "$SECONDS_EACH" -t "$TIMEOUT_MS" -m "$MEM_MB" -- "$bin" >"$OUT/$t.log" 2>&1
  rc=$?
  set -e
  stats="$out/default/fuzzer_stats"
  if [ $rc -ne 0 ] || ! [ -f "$stats" ]; then
    log "$t: afl-fuzz failed (exit $rc); its output:"
    tail -40 "$OUT/$t.log" >&2
    fail=1
    rows+=("$t - - - -")
    continue
  fi
  crashes=0
  for f in "$out"/default/crashes/id:*; do
    [ -e "$f" ] || continue
    crashes=$((crashes + 1))
    fail=1
    [ $crashes -le 5 ] || continue # the first five are shown; all are counted and kept
    log "$t: CRASH on $f"
    msg="$( (RUST_BACKTRACE=0 MAPPA_FUZZ_SHOW=1 timeout -k 5 "$HANG_SECONDS" "$bin" <"$f") 2>&1 || true)"
    printf '%s\n' "$msg" | grep -v '^note: run with' | head -8 | sed 's/^/    /' >&2
  done
  hangs=0
  for f in "$out"/default/hangs/id:*; do
    [ -e "$f" ] || continue
    start=$(date +%s.%N)
    set +e
    timeout -k 5 "$HANG_SECONDS" "$bin" <"$f" >/dev/null 2>&1
    rc=$?
    set -e
    took=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      hangs=$((hangs + 1))
      log "$t: HANG on $f (still running after ${HANG_SECONDS}s)"
      fail=1
    else
      log "$t: slow input $f (over ${TIMEOUT_MS} ms under AFL, ${took}s alone, exit $rc): not counted as a hang"
    fi
  done
  rows+=("$t $(field execs_done "$stats") $(field corpus_count "$stats") $crashes $hangs")
done

printf '%-16s %10s %7s %8s %6s\n' target execs paths crashes hangs
for r in "${rows[@]}"; do
  # shellcheck disable=SC2086
  printf '%-16s %10s %7s %8s %6s\n' $r
done
timing="build ${built_at}s, fuzzing $((SECONDS - built_at))s"
if [ $fail -ne 0 ]; then
  log "FAILED: a target crashed, hung or could not run ($timing; inputs and logs under $OUT)"
  exit 1
fi
log "no crashes, no hangs ($timing)"
