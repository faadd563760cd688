"""Checks that a directory written by `mappa convert` loads in transformers and gives the reference logits.

    mappa convert ~/.cache/mappa/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smol-f32 --dtype f32
    ~/.cache/cpu-peers/venv-torch/bin/python tools/check_hf_export.py /tmp/smol-f32 \
        ../shared/data/models/smollm2-135m-instruct-q4_1.reference.json

Needs torch + transformers (the venv ../shared/tools/cpu-peers.sh makes). Prints the worst top-10 logit
error per prompt, whether the greedy continuation matches, and whether the tokenizer and chat template
reproduce the reference ids; exits non-zero on a mismatch.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, ref_path = sys.argv[1], sys.argv[2]
ref = json.load(open(ref_path))
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
ok = True
for case in ref["tokenizer_cases"]:
    ids = tok(case["text"], add_special_tokens=False)["input_ids"]
    if ids != case["ids"]:
        ok = False
        print("tokenizer mismatch:", repr(case["text"]), ids, case["ids"])
chat = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True)
print("chat template renders:", repr(chat[:80]))
for p in ref["prompts"]:
    ids = torch.tensor([p["ids"]])
    with torch.no_grad():
        last = model(ids).logits[0, -1]
        out = model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=tok.eos_token_id)
    worst = max(abs(float(last[i]) - v) for i, v in p["last_logits_top10"])
    greedy = out[0, ids.shape[1]:].tolist()
    same = greedy == p["greedy_32_ids"]
    ok &= worst < 2e-3 and same
    print(f"{p['text'][:40]!r}: worst top-10 logit error {worst:.2e}, greedy identical: {same}")
print("OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
