#!/usr/bin/env bash
# bench-batch.sh: batched decode of SmolLM2-135M f32 on the CPU, mappa's engine against llama.cpp's
# llama-batched-bench (same machine, same threads, interleaved round by round since this shared 2-core
# machine drifts by 15-30 % over minutes). Both sides: `batch` sequences of 16 prompt tokens, 128 new tokens
# each, aggregate tokens/s = batch x 128 / wall time of the whole batch (prefill included on both sides).
# llama.cpp is the build that ../shared/tools/cpu-peers.sh makes (run it once with INSTALL_ONLY=1 SKIP_TORCH=1,
# then `PATH=~/.cache/cpu-peers/venv-llama/bin:$PATH cmake --build ~/.cache/cpu-peers/llama-build --target
# llama-batched-bench`), on its F32 GGUF.
# Appends one JSON line per (round, batch) to benches/results/cpu.jsonl and prints the medians.
#   ROUNDS=3 bash tools/bench-batch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"; SIZES="${SIZES:-1 4 16 32}"; THREADS="${THREADS:-2}"
C="${CPU_PEERS_CACHE:-$HOME/.cache/cpu-peers}"
LBB="$C/llama-build/bin/llama-batched-bench"; GGUF="$C/model/SmolLM2-135M-Instruct.F32.gguf"
[ -x "$LBB" ] && [ -s "$GGUF" ] || { echo "llama-batched-bench or $GGUF missing (see the header)" >&2; exit 1; }
OUT=benches/results/cpu.jsonl; mkdir -p "$(dirname "$OUT")"
COMMIT="$(git rev-parse --short HEAD)"; DATE="$(date -u +%F)"
cargo bench --bench cpu_batch --no-run 2>/dev/null
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
  npl="$(echo $SIZES | tr ' ' ',')"
  "$LBB" -m "$GGUF" -c 8192 -b 2048 -ub 512 -npp 16 -ntg 128 -npl "$npl" -t "$THREADS" 2>/dev/null \
    | awk -F'|' '/^\|[ ]+16 /{gsub(/ /,""); print $4, $4*128/$10}' > "$tmp/peer"
  RAYON_NUM_THREADS="$THREADS" REPS=1 cargo bench --bench cpu_batch -- $SIZES 2>/dev/null > "$tmp/mappa"
  python3 - "$tmp/peer" "$tmp/mappa" "$r" "$COMMIT" "$DATE" >> "$OUT" <<'PY'
import json, sys
peer = {int(b): float(t) for b, t in (l.split() for l in open(sys.argv[1]) if l.strip())}
for line in open(sys.argv[2]):
    m = json.loads(line)
    print(json.dumps({"name": "decode_smollm2_f32_128", "batch": m["batch"], "tokens_per_s": round(m["tokens_per_s"], 1),
                      "peer": "llama.cpp llama-batched-bench F32", "peer_tokens_per_s": round(peer.get(m["batch"], float("nan")), 1),
                      "round": int(sys.argv[3]), "commit": sys.argv[4], "date": sys.argv[5]}))
PY
done
python3 - "$OUT" "$COMMIT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if r["commit"] == sys.argv[2] and r["name"] == "decode_smollm2_f32_128"]
print("| batch | mappa tok/s | llama.cpp tok/s | ratio (median of rounds) | x batch 1 (mappa) |")
print("|---|---|---|---|---|")
base = None
for b in sorted({r["batch"] for r in rows}):
    rs = [r for r in rows if r["batch"] == b]
    m, p = statistics.median(r["tokens_per_s"] for r in rs), statistics.median(r["peer_tokens_per_s"] for r in rs)
    ratio = statistics.median(r["tokens_per_s"] / r["peer_tokens_per_s"] for r in rs)
    base = base or m
    print(f"| {b} | {m:.1f} | {p:.1f} | {ratio:.2f} | {m / base:.2f} |")
PY
