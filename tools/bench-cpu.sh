#!/usr/bin/env bash
# bench-cpu.sh: mappa's CPU benchmark interleaved with its peers in one sitting, since this shared 2-core
# machine drifts by 15-30 % over minutes. Each round runs the peers once (llama.cpp llama-bench and PyTorch,
# through ../shared/tools/cpu-peers.sh, which installs them on first use) and then `cargo bench` once.
# Prints mappa's medians per round; the peers' tables land in ~/.cache/cpu-peers/results/<stamp>/table.md.
#   ROUNDS=3 bash tools/bench-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
PEERS="${PEERS:-../shared/tools/cpu-peers.sh}"
cargo bench --bench cpu_inference --no-run 2>/dev/null
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS: peers ($(cut -d' ' -f1-3 /proc/loadavg))"
  SKIP_LLAMA_PY=1 ROUNDS=1 bash "$PEERS" 2>/dev/null | grep -E '^\|' || true
  echo "== round $r/$ROUNDS: mappa ($(cut -d' ' -f1-3 /proc/loadavg))"
  cargo bench --bench cpu_inference -- --noplot >/dev/null 2>&1
  for b in prefill_128 prefill_512 decode_128; do
    python3 - "$b" <<'PY'
import json, sys
name = sys.argv[1]
est = json.load(open(f"target/criterion/smollm2_f32/{name}/new/estimates.json"))
tokens = int(name.rsplit("_", 1)[1])
med = est["median"]["point_estimate"] * 1e-9
print(f"mappa f32 {name:12s} {tokens / med:8.1f} tok/s  (median of 10, {med * 1e3:.0f} ms per run)")
PY
  done
done
