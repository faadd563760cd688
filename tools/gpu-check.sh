#!/usr/bin/env bash
# gpu-check.sh: every GPU test and benchmark in one call on the device machine (CUDA, no Rust), a table at
# the end, full logs under $OUT.
#
#   here:   bash tools/gpu-check.sh build      # release binaries -> .gpu-bin/ and, xz-compressed to fit one
#                                              # carry, .gpu-bin.tar.xz; the SmolLM2 GGUF in two halves ->
#                                              # .gpu-model/1 and .gpu-model/2 (all git-ignored)
#   device: bash tools/gpu-check.sh stage 1    # carry .gpu-model/1: keeps it on the warm machine
#           bash tools/gpu-check.sh stage 2    # carry .gpu-model/2 (the machine must still be warm)
#           bash tools/gpu-check.sh run        # carry .gpu-bin.tar.xz: tests, the main job end to end, serve's
#                                              # memory, benches, peers, memcheck and racecheck, table
#           bash tools/gpu-check.sh run tests e2e   # only those parts (tests, e2e, bench: generation and
#                                              # its peer, trainbench: training and its peers, sanitize),
#                                              # when one call's 10 minutes do not hold them all
#
# The carry limit is 64 MiB a call, so the 98 MB model travels in two calls before the run; `run` refuses
# to start without it. Benchmark lines land in $OUT/generate.jsonl (joined with the transformers peer) and
# $OUT/train.jsonl (the fused loss joined with PyTorch eager and Liger-Kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.gpu-bin
STAGE=/tmp/mappa-gpu-stage   # survives between calls while the device machine stays warm
TESTS=(cuda_kernels cuda_attention cuda_sample cuda_model cuda_train cuda_train_model train_reference)
case "${1:-}" in
build)
  rm -rf "$BIN" "$BIN.tar.xz" .gpu-model && mkdir -p "$BIN" .gpu-model
  targets=(); for t in "${TESTS[@]}"; do targets+=(--test "$t"); done
  REQUIRE_CUDA_KERNELS=1 cargo test --release --no-run --message-format=json "${targets[@]}" \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' \
    | while read -r name exe; do cp "$exe" "$BIN/$name"; done
  for bench in cuda_generate cuda_training; do
    REQUIRE_CUDA_KERNELS=1 cargo bench --no-run --message-format=json --bench "$bench" \
      | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])' \
      | while read -r exe; do cp "$exe" "$BIN/$bench"; done
  done
  REQUIRE_CUDA_KERNELS=1 cargo build --release --bin mappa && cp "${CARGO_TARGET_DIR:-target}/release/mappa" "$BIN/mappa"
  strip "$BIN"/*
  # The fused loss's Triton peer, installed on the device from this wheel.
  pip download --quiet --no-deps -d "$BIN" liger-kernel==0.6.4
  git rev-parse --short HEAD > "$BIN/commit"
  # Nine stripped binaries pass the 64 MiB carry limit; compressed they take about a third of it.
  tar -cJf "$BIN.tar.xz" "$BIN"
  gguf="${MAPPA_HOME:-$HOME/.cache/mappa}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  split -n 2 -d -a 1 "$gguf" .gpu-model/part && mkdir .gpu-model/1 .gpu-model/2 \
    && mv .gpu-model/part0 .gpu-model/1/ && mv .gpu-model/part1 .gpu-model/2/
  du -sh "$BIN" "$BIN.tar.xz" .gpu-model/1 .gpu-model/2
  ;;
stage)
  mkdir -p "$STAGE" && cp .gpu-model/"$2"/part* "$STAGE"/ && ls -la "$STAGE"
  ;;
run)
  logs="${OUT:-gpu-logs}"; mkdir -p "$logs"
  if [ -f "$BIN.tar.xz" ]; then rm -rf "$BIN" && tar -xJf "$BIN.tar.xz"; fi  # this call's binaries, not a warm machine's
  [ -f "$STAGE/part0" ] && [ -f "$STAGE/part1" ] || { echo "model not staged: run 'stage 1' and 'stage 2' first" >&2; exit 2; }
  export MAPPA_HOME="$STAGE/home" MAPPA_COMMIT="$(cat "$BIN/commit")" MAPPA_DATE="$(date -u +%F)"
  mkdir -p "$MAPPA_HOME/models" && cat "$STAGE/part0" "$STAGE/part1" > "$MAPPA_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  # cuBLASLt 13 for cudarc: the toolkit's, or the one PyTorch's wheels carry.
  for d in /usr/local/cuda/lib64 $(python3 -c 'import glob, nvidia, os; print(" ".join(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib"))))' 2>/dev/null); do
    LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
  done
  export LD_LIBRARY_PATH
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$logs/device.txt" || true
  parts=" ${*:2} "; [ "$parts" = "  " ] && parts=" tests e2e bench trainbench sanitize "
  want() { [[ "$parts" == *" $1 "* ]]; }
  rows=()
  if want tests; then
    for name in "${TESTS[@]}"; do
      # A time limit per binary, so a hang costs one row, not the call's remaining minutes.
      if timeout 240 "$BIN/$name" --test-threads=1 > "$logs/$name.log" 2>&1; then status=ok
      else [ $? = 124 ] && status=TIMEOUT || status=FAILED; fi
      summary=$(grep -E '^test result:' "$logs/$name.log" | tail -1 | sed 's/test result: //')
      skipped=$(grep -c '^SKIPPED' "$logs/$name.log" || true)
      rows+=("$(printf '%-22s %-7s skipped %-3s %s' "$name" "$status" "$skipped" "$summary")")
    done
  fi
  if want e2e; then
    # The README's main job on the GPU, end to end (rollouts, rule coach, training, a checkpoint each step,
    # evaluation, report) with the device's memory sampled every 0.2 s; then its last checkpoint dropped and
    # the run resumed: the step comes out again with the same weights, byte for byte.
    run="$STAGE/run"; rm -rf "$run"
    ( while nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; do sleep 0.2; done ) > "$logs/train_memory.txt" 2>/dev/null &
    monitor=$!
    e2e() {
      "$BIN/mappa" train --set run.backend=cuda --set rl.checkpoint_every=1 --set "run.dir=$run" || return 1
      last=$(ls -d "$run"/checkpoints/step-* | tail -1) && cp -r "$last" "$run/first-try" && rm -rf "$last"
      "$BIN/mappa" train --resume "$run" || return 1
      for agent in "$run"/first-try/*/; do
        cmp "$agent/model.safetensors" "$last/$(basename "$agent")/model.safetensors" || return 1
      done
    }
    e2e > "$logs/train_e2e.log" 2>&1 && status=ok || status=FAILED
    kill "$monitor" 2>/dev/null || true
    rows+=("$(printf '%-22s %-7s peak device memory %s MiB' train_e2e "$status" "$(sort -n "$logs/train_memory.txt" | tail -1)")")
    # serve: the device memory after 200 requests is what it was after the first 50.
    python3 tools/serve_memory.py "$BIN/mappa" "$MAPPA_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
      > "$logs/serve_memory.jsonl" 2> "$logs/serve_memory.log" && status=ok || status=FAILED
    rows+=("$(printf '%-22s %-7s %s' serve_memory "$status" "$(tail -1 "$logs/serve_memory.jsonl" 2>/dev/null)")")
  fi
  if want bench; then
    # Benchmarks: ours, then the transformers peer on the same prompts, joined by batch.
    BENCH_PROMPTS="$logs/prompts.json" REPS="${REPS:-3}" "$BIN/cuda_generate" > "$logs/ours.jsonl" 2> "$logs/cuda_generate.log" \
      && status=ok || status=FAILED
    rows+=("$(printf '%-22s %-7s' cuda_generate "$status")")
    "$BIN/mappa" convert "$MAPPA_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$STAGE/hf" --dtype bf16 > "$logs/convert.log" 2>&1 \
      && REPS="${REPS:-2}" python3 tools/peer_generate.py "$STAGE/hf" "$logs/prompts.json" > "$logs/peer.jsonl" 2> "$logs/peer.log" \
      && status=ok || status=FAILED
    rows+=("$(printf '%-22s %-7s' transformers_peer "$status")")
  fi
  if want trainbench; then
    # Training: ours (fused loss, full steps), then PyTorch eager and Liger-Kernel on the fused loss's shapes.
    "$BIN/cuda_training" > "$logs/train_ours.jsonl" 2> "$logs/cuda_training.log" && status=ok || status=FAILED
    rows+=("$(printf '%-22s %-7s' cuda_training "$status")")
    pip install --quiet --no-deps "$BIN"/liger_kernel-*.whl > "$logs/liger_install.log" 2>&1 || true
    python3 tools/peer_fused_loss.py > "$logs/train_peer.jsonl" 2> "$logs/peer_fused_loss.log" && status=ok || status=FAILED
    rows+=("$(printf '%-22s %-7s' fused_loss_peers "$status")")
  fi
  if want sanitize; then
    # Last (slowest; a time limit cuts only these): the kernel tests under compute-sanitizer's memcheck, then
    # its racecheck (shared-memory hazards).
    for tool in memcheck racecheck; do
      for name in cuda_kernels cuda_attention cuda_sample cuda_train; do
        if timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 1 "$BIN/$name" --test-threads=1 > "$logs/$name.$tool.log" 2>&1; then
          status=ok; else [ $? = 124 ] && status=TIMEOUT || status=FAILED; fi
        rows+=("$(printf '%-22s %-7s %s' "$name:$tool" "$status" "$(grep -E 'ERROR SUMMARY' "$logs/$name.$tool.log" | tail -1)")")
      done
    done
  fi
  python3 - "$logs" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
read = lambda f: [json.loads(l) for l in (d / f).read_text().splitlines() if l.startswith("{")] if (d / f).exists() else []
peer = {(p["model"], p["batch"]): p["tokens_per_s"] for p in read("peer.jsonl")}
with open(d / "generate.jsonl", "w") as out:
    for m in read("ours.jsonl"):
        if m["name"] == "generate":
            m["peer_tokens_per_s"] = peer.get((m["model"], m["batch"]))
        out.write(json.dumps(m) + "\n")
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()
                        if k not in ("device", "commit", "date")))
# train.jsonl: our measurements, the fused loss once per peer (its time and memory beside ours).
peers = [p for p in read("train_peer.jsonl") if "peer_ms" in p]
with open(d / "train.jsonl", "w") as out:
    for m in read("train_ours.jsonl"):
        rows = [dict(m, peer=p["peer"], peer_ms=p["peer_ms"], peer_peak_mib=p["peer_peak_mib"]) for p in peers] \
            if m.get("bench") == "fused_loss" else [m]
        for r in rows or [m]:
            out.write(json.dumps(r) + "\n")
            print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                            if k not in ("device", "commit", "date")))
PY
  printf '\n%s\n' "---- gpu-check summary ----"; printf '%s\n' "${rows[@]}"
  ! printf '%s\n' "${rows[@]}" | grep -qE 'FAILED|TIMEOUT'
  ;;
*) echo "usage: $0 build | stage 1|2 | run [tests] [e2e] [bench] [trainbench] [sanitize]" >&2; exit 2 ;;
esac
