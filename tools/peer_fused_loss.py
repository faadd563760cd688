"""The peers of benches/cuda_train.rs's fused_loss, on the device machine, at the same shapes (T = 16,384
positions, d = 896, V = 151,936, bf16 inputs): the log-prob of each target token and the gradient of a
weighted sum of them w.r.t. the hidden states and the head matrix, forward + backward.

- eager: PyTorch as a policy loss is usually written, logits = h W^T in fp32, log_softmax, gather, weighted
  sum, backward (the [T, V] logits and their gradient live in memory);
- liger: Liger-Kernel's fused linear cross-entropy (Triton; sum reduction), the same GEMM work and the same
  chunked no-[T, V] idea; it takes no per-token weights, so its loss is the unweighted sum of -log p.

Time: median of REPS runs after a warm-up, CUDA events. Memory: torch.cuda.max_memory_allocated during the
call minus what was allocated before it (the inputs). One JSON object per peer.

    python3 tools/peer_fused_loss.py            (liger_kernel importable, e.g. from the carried wheel)
"""
import json, os, statistics

import torch

T, D, V = 16_384, 896, 151_936
reps = int(os.environ.get("REPS", "5"))
torch.manual_seed(0)
h0 = (torch.rand(T, D, device="cuda") * 4 - 2).bfloat16()
w0 = (torch.rand(V, D, device="cuda") * 0.1 - 0.05).bfloat16()
targets = (torch.arange(T, device="cuda") * 7919) % V
coef = torch.rand(T, device="cuda") * 2 - 1


def eager(h, w):
    logp = torch.log_softmax((h @ w.T).float(), dim=-1).gather(1, targets[:, None])[:, 0]
    (coef * logp).sum().backward()


def liger(h, w):
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    LigerFusedLinearCrossEntropyLoss(reduction="sum")(w, h, targets).backward()


def measure(name, fn):
    def once():
        h = h0.clone().requires_grad_()
        w = w0.clone().requires_grad_()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(h, w)
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b), (torch.cuda.max_memory_allocated() - base) / 2**20

    once()
    runs = [once() for _ in range(reps)]
    print(json.dumps({"bench": "fused_loss_peer", "peer": name, "t": T, "d": D, "v": V,
                      "peer_ms": statistics.median(r[0] for r in runs),
                      "peer_peak_mib": statistics.median(r[1] for r in runs)}))


for name, fn in [("pytorch_eager", eager), ("liger_kernel", liger)]:
    try:
        measure(name, fn)
    except Exception as e:  # a missing peer is reported, not fatal to the other
        print(json.dumps({"bench": "fused_loss_peer", "peer": name, "error": f"{type(e).__name__}: {e}"}))
