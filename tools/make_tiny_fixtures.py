"""Writes tests/data/tiny-{llama,qwen2,qwen3}/: tiny random models saved by transformers (safetensors, f32)
with the logits transformers computes for a fixed token sequence (eager attention, f32, CPU).

The three cover what SmolLM2 does not: llama3 RoPE scaling, qwen2's q/k/v biases, qwen3's per-head q/k
RMSNorm, untied LM heads, and heads wider than the hidden size (6 x 64 > 48, as in qwen3). head_dim is 64,
the smallest the CUDA kernels take, so the same fixtures check the GPU. Run once with torch + transformers (e.g. the venv ../shared/tools/cpu-peers.sh
makes) and commit the output; tests/torch_reference.rs checks the CPU backend against it:
    ~/.cache/cpu-peers/venv-torch/bin/python tools/make_tiny_fixtures.py
"""
import json
import pathlib

import torch
import transformers
from transformers import LlamaConfig, Qwen2Config, Qwen3Config, AutoModelForCausalLM

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
TOKENS = [(i * 7 + 3) % 67 for i in range(20)]
COMMON = dict(vocab_size=67, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
              num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0,
              max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "llama": LlamaConfig(**COMMON, tie_word_embeddings=True,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "qwen2": Qwen2Config(**COMMON, tie_word_embeddings=False),
    "qwen3": Qwen3Config(**COMMON, tie_word_embeddings=False, attention_bias=False),
}


def tokenizer_json(vocab):
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": {f"t{i}": i for i in range(vocab)}, "unk_token": "t0"}}


for name, cfg in CONFIGS.items():
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    # Re-initialise so logits are O(1) rather than near zero: norms around 1, everything else uniform.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.4 * (torch.rand_like(p) - 0.5))
            else:
                p.copy_(torch.rand_like(p) - 0.5)
    d = OUT / f"tiny-{name}"
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    (d / "tokenizer.json").write_text(json.dumps(tokenizer_json(cfg.vocab_size)))
    with torch.no_grad():
        logits = model(torch.tensor([TOKENS])).logits[0]
    (d / "reference.json").write_text(json.dumps({
        "transformers": transformers.__version__, "torch": torch.__version__,
        "tokens": TOKENS, "logits": [[round(float(x), 6) for x in row] for row in logits],
    }))
    print(name, "params", sum(p.numel() for p in model.parameters()), "->", d)
