"""The transformers peer of benches/cuda_generate.rs, on the device machine, in the same call: the same two
models (SmolLM2-135M from the Hugging Face directory `mappa convert --dtype bf16` wrote, and the Qwen2.5-0.5B
shape with random weights, made here from its config: speed does not depend on the weights' values), the
same prompts (the token ids the bench wrote), bf16 on the GPU, greedy, eos disabled so that every sequence
runs its full length. Batch 1: the decode rate, (NEW - 1) / (time of NEW tokens - time of 1). Batches 16, 64
and 256: all new tokens / wall time, prefill included. Median of REPS runs (default 3) after a short
warm-up; one JSON object per measurement on stdout, with the bench's model names.

    python3 tools/peer_generate.py SMOLLM2_HF_DIR PROMPTS_JSON
"""
import json, os, statistics, sys, time

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen2Config

NEW = 512
smollm2_dir, prompts_path = sys.argv[1], sys.argv[2]
reps = int(os.environ.get("REPS", "3"))
prompts = json.load(open(prompts_path))


def qwen_05b():
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      rope_theta=1e6, tie_word_embeddings=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)


def run(model, batch, new):
    ids = torch.tensor(prompts[:batch], device="cuda")  # equal lengths: no padding needed
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + new
    return time.perf_counter() - start


models = [("SmolLM2-135M-Instruct (bf16)", lambda: AutoModelForCausalLM.from_pretrained(smollm2_dir, torch_dtype=torch.bfloat16)),
          ("Qwen2.5-0.5B shape, random weights", qwen_05b)]
for name, make in models:
    model = make().to(torch.bfloat16).cuda().eval()
    for batch in [1, 16, 64, 256]:
        run(model, batch, 4)
        if batch == 1:
            first = statistics.median(run(model, 1, 1) for _ in range(reps))
            rate = statistics.median((NEW - 1) / (run(model, 1, NEW) - first) for _ in range(reps))
        else:
            rate = statistics.median(batch * NEW / run(model, batch, NEW) for _ in range(reps))
        print(json.dumps({"name": "generate_peer", "peer": f"transformers {transformers.__version__}", "model": name,
                          "batch": batch, "new_tokens": NEW, "tokens_per_s": rate}), flush=True)
    del model
    torch.cuda.empty_cache()
