"""Writes tests/data/adamw_reference.json: a 10-step torch.optim.AdamW trajectory that tests/optim.rs replays.

Three small f32 parameters (a linear layer plus a free vector, 92 floats) follow the gradients of a fixed
loss: half the MSE of the linear layer on fixed data plus a weighted quadratic pulling the vector to a
target. The scale puts the gradient norm above 1.0 for the first 7 steps and below it for the last 3, so
both sides of clipping are replayed.
Each step clips with torch.nn.utils.clip_grad_norm_(..., 1.0) and takes its LR from transformers'
get_cosine_with_min_lr_schedule_with_warmup (the schedule OpenRLHF's "cosine_with_min_lr" builds), read
before optimizer.step() as a training loop would. AdamW runs single-tensor (foreach=False, the
_single_tensor_adam path) with betas (0.9, 0.95), eps 1e-8 and weight decay 0.1 so decay is exercised.

Recorded: the initial parameters, and per step the gradients before clipping, the total norm clip_grad_norm_
returned, the LR and the parameters after the step. Floats are written with 9 significant digits, which
round-trips every f32 exactly (the LR is an f64 in Python; 9 digits is far inside the tests' tolerance).
Run once with torch + transformers and commit the output:
    ~/.cache/cpu-peers/venv-torch/bin/python tools/make_adamw_fixture.py
"""
import json
import pathlib

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "adamw_reference.json"
STEPS, WARMUP, LR, MIN_LR_RATE = 10, 2, 0.05, 0.1
BETAS, EPS, WEIGHT_DECAY, MAX_NORM = (0.9, 0.95), 1e-8, 0.1, 1.0

torch.manual_seed(7)
params = {
    "linear.weight": torch.randn(4, 16) * 0.5,
    "linear.bias": torch.zeros(4),
    "vector": torch.randn(24),
}
for p in params.values():
    p.requires_grad_(True)
x, y = torch.randn(32, 16), torch.randn(32, 4)
target, weights = torch.randn(24) * 0.3, torch.rand(24) * 0.2


def loss_fn():
    pred = x @ params["linear.weight"].T + params["linear.bias"]
    return 0.5 * ((pred - y) ** 2).mean() + (weights * (params["vector"] - target) ** 2).sum()


optimizer = torch.optim.AdamW(params.values(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                              foreach=False)
scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=WARMUP,
                                                        num_training_steps=STEPS, min_lr_rate=MIN_LR_RATE)


def rounded(t):
    return [float(f"{v:.9g}") for v in t.detach().flatten().tolist()]


def snapshot():
    return {name: rounded(p) for name, p in params.items()}


initial, steps = snapshot(), []
for _ in range(STEPS):
    optimizer.zero_grad()
    loss_fn().backward()
    grads = {name: rounded(p.grad) for name, p in params.items()}
    norm = torch.nn.utils.clip_grad_norm_(params.values(), MAX_NORM)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    steps.append({"lr": float(f"{lr:.9g}"), "grad_norm": float(f"{norm.item():.9g}"), "grads": grads,
                  "params_after": snapshot()})

fixture = {
    "torch": torch.__version__,
    "config": {"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY, "max_norm": MAX_NORM,
               "warmup_steps": WARMUP, "total_steps": STEPS, "min_lr_rate": MIN_LR_RATE},
    "names": list(params),
    "initial": initial,
    "steps": steps,
}
# One line per step keeps the file small and diffable.
lines = ",\n".join(json.dumps(s, separators=(",", ":")) for s in steps)
head = json.dumps({k: v for k, v in fixture.items() if k != "steps"}, separators=(",", ":"))
OUT.write_text(head[:-1] + ',"steps":[\n' + lines + "\n]}\n")
print(f"wrote {OUT} ({OUT.stat().st_size} bytes); norms:", [s["grad_norm"] for s in steps])
