#!/usr/bin/env bash
# gpu-check.sh: every GPU test (and, as they land, GPU benchmark) in one call, for the device machine,
# which has CUDA but no Rust toolchain.
#   here:   bash tools/gpu-check.sh build   # release test binaries -> .gpu-bin/ (git-ignored; carry it)
#   device: bash tools/gpu-check.sh run     # runs them, full logs under $OUT (or ./gpu-logs), a table at the end
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.gpu-bin
case "${1:-}" in
build)
  rm -rf "$BIN" && mkdir -p "$BIN"
  REQUIRE_CUDA_KERNELS=1 cargo test --release --no-run --message-format=json --test cuda_kernels \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' \
    | while read -r name exe; do cp "$exe" "$BIN/$name" && strip "$BIN/$name"; done  # carry limit: 64 MiB
  ls -la "$BIN"
  ;;
run)
  logs="${OUT:-gpu-logs}"; mkdir -p "$logs"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$logs/device.txt" || true
  rows=()
  for t in "$BIN"/*; do
    name=$(basename "$t")
    if "$t" --test-threads=1 > "$logs/$name.log" 2>&1; then status=ok; else status=FAILED; fi
    summary=$(grep -E '^test result:' "$logs/$name.log" | tail -1 | sed 's/test result: //')
    skipped=$(grep -c '^SKIPPED' "$logs/$name.log" || true)
    rows+=("$(printf '%-20s %-7s skipped %-3s %s' "$name" "$status" "$skipped" "$summary")")
  done
  printf '\n%s\n' "---- gpu-check summary ----"; printf '%s\n' "${rows[@]}"
  ! printf '%s\n' "${rows[@]}" | grep -q FAILED
  ;;
*) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
