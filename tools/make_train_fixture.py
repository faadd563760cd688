"""Writes tests/data/tiny-{llama,qwen2}/train_reference.{safetensors,json}: a PyTorch reference for the
training engine's gradient and optimizer tests, computed on the tiny models tools/make_tiny_fixtures.py made.

What it computes (float32, CPU, eager attention, deterministic), for each model:
  * two sequences seq_a (13 ids) and seq_b (7 ids), drawn uniformly from [0, vocab) with a fixed seed, each
    run through the model on its own (batch 1, positions from 0, no padding), so nothing attends across them;
  * logp: for t = 0..len-2, log_softmax(logits[t])[ids[t+1]] (full vocab, temperature 1), seq_a then seq_b:
    12 + 6 = 18 values;
  * coef: 18 fixed coefficients uniform in [-1, 1]; loss = sum_t coef_t * logp_t (a plain sum);
  * grad.<name>: d loss / d parameter for every model.named_parameters() entry (HF names; with tied
    embeddings there is only model.embed_tokens.weight, which gets both the embedding and LM-head terms);
  * a 10-step trajectory from the original weights: loss, backward, clip_grad_norm_(max_norm=1.0) (its
    returned pre-clip total norm is recorded), AdamW step (all parameters decayed, norms and biases included),
    zero grads; trajectory_loss holds the 10 losses before each update plus the loss of the final weights.
    The trajectory is run twice, in float32 and in float64 (trajectory_*_f64): at lr 1e-2 some steps
    amplify rounding (float32 and float64 PyTorch differ by 3e-3 in one step's norm), so a test measures
    float32 against the float64 run and allows for PyTorch's own float32 error at each step.
The .safetensors holds logp, coef and the grads; the .json holds the ids, the loss, the AdamW settings and
the trajectory. Run once with torch + transformers (the venv ../shared/tools/cpu-peers.sh makes) and commit:
    ~/.cache/cpu-peers/venv-torch/bin/python tools/make_train_fixture.py
"""
import json
import pathlib

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
MODELS = ["tiny-llama", "tiny-qwen2"]
LEN_A, LEN_B = 13, 7
ADAMW = {"lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "max_grad_norm": 1.0}
STEPS = 10

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def load(d, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="eager")
    return model.train()  # attention_dropout is 0 in these configs, so train() and eval() give the same numbers


def seq_logp(model, ids):
    """logp_t = log_softmax(logits[t])[ids[t+1]] for t = 0..len-2, one sequence on its own."""
    logits = model(torch.tensor([ids]), use_cache=False).logits[0]
    return torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)


def loss_fn(model, seqs, coef):
    logp = torch.cat([seq_logp(model, s) for s in seqs])
    return (coef.to(logp.dtype) * logp).sum(), logp


def trajectory(d, seqs, coef, dtype):
    """The 10-step AdamW trajectory from the original weights in `dtype`: losses (11) and pre-clip norms (10)."""
    model = load(d, dtype)
    params = [p for _, p in model.named_parameters()]
    opt = torch.optim.AdamW(params, lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"],
                            weight_decay=ADAMW["weight_decay"], foreach=False)
    losses, norms = [], []
    for _ in range(STEPS):
        step_loss, _ = loss_fn(model, seqs, coef)
        losses.append(step_loss.item())
        step_loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm=ADAMW["max_grad_norm"]).item())
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        losses.append(loss_fn(model, seqs, coef)[0].item())
    return losses, norms


def make_one(d):
    cfg = json.loads((d / "config.json").read_text())
    g = torch.Generator().manual_seed(20240601)
    seq_a = torch.randint(0, cfg["vocab_size"], (LEN_A,), generator=g).tolist()
    seq_b = torch.randint(0, cfg["vocab_size"], (LEN_B,), generator=g).tolist()
    coef = torch.rand(LEN_A - 1 + LEN_B - 1, generator=g) * 2 - 1
    seqs = [seq_a, seq_b]

    # Gradient of the loss at the original weights.
    model = load(d)
    loss, logp = loss_fn(model, seqs, coef)
    loss.backward()
    tensors = {"logp": logp.detach(), "coef": coef}
    for name, p in model.named_parameters():
        tensors[f"grad.{name}"] = p.grad.detach()
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(d / "train_reference.safetensors"))

    (traj_loss, traj_norm), (loss64, norm64) = (trajectory(d, seqs, coef, dt) for dt in (torch.float32, torch.float64))
    (d / "train_reference.json").write_text(json.dumps({
        "generator": "tools/make_train_fixture.py", "torch": torch.__version__,
        "transformers": transformers.__version__, "seq_a": seq_a, "seq_b": seq_b, "loss": loss.item(),
        "adamw": ADAMW, "trajectory_loss": traj_loss, "trajectory_grad_norm": traj_norm,
        "trajectory_loss_f64": loss64, "trajectory_grad_norm_f64": norm64,
    }) + "\n")
    worst = max(abs(a - b) / b for a, b in zip(traj_norm, norm64))
    print(d.name, "loss", loss.item(), "trajectory", traj_loss[0], "->", traj_loss[-1],
          f"float32 norms off float64 by up to {worst:.1e} (relative)")


if __name__ == "__main__":
    for m in MODELS:
        make_one(DATA / m)
