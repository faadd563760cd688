"""The transformers peer of benches/cuda_generate.rs, on the device machine: the same model (converted to a
Hugging Face directory by `mappa convert --dtype bf16`), the same prompts (token ids the bench wrote), bf16 on
the GPU, greedy, eos disabled so every sequence runs its full length; batch 1 (256 new tokens, decode rate
from the time of 256 tokens minus the time of 1) and batches of 64 and 256 (128 new tokens, aggregate rate
with prefill). Median of REPS runs after a warm-up; one JSON object per measurement on stdout.

    python3 tools/peer_generate.py HF_DIR PROMPTS_JSON
"""
import json, os, statistics, sys, time

import torch
from transformers import AutoModelForCausalLM

model_dir, prompts_path = sys.argv[1], sys.argv[2]
reps = int(os.environ.get("REPS", "5"))
prompts = json.load(open(prompts_path))
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).cuda().eval()


def run(batch, new):
    ids = torch.tensor(prompts[:batch], device="cuda")  # equal lengths: no padding needed
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + new
    return time.perf_counter() - start


for batch, new in [(1, 256), (64, 128), (256, 128)]:
    run(batch, new)
    if batch == 1:
        first = statistics.median(run(1, 1) for _ in range(reps))
        rate = statistics.median((new - 1) / (run(1, new) - first) for _ in range(reps))
    else:
        rate = statistics.median(batch * new / run(batch, new) for _ in range(reps))
    print(json.dumps({"name": "generate_peer", "peer": f"transformers {__import__('transformers').__version__}",
                      "batch": batch, "new_tokens": new, "tokens_per_s": rate}), flush=True)
