"""Load test of `mappa serve` (issue 15): C concurrent clients send chat completions for D seconds through
the official OpenAI client; prints one JSON line: requests, errors, completion tokens per second, and p50 /
p99 request latency. Any error makes the exit status 1.

    PYTHONPATH=~/.cache/mappa/py-openai python3 tools/load_test.py --base-url http://127.0.0.1:8000/v1 \
        --model SmolLM2-135M-Instruct.Q4_1 --clients 64 --seconds 60
"""
import argparse
import asyncio
import json
import statistics
import sys
import time

import openai

p = argparse.ArgumentParser()
p.add_argument("--base-url", required=True)
p.add_argument("--model", required=True)
p.add_argument("--clients", type=int, default=64)
p.add_argument("--seconds", type=float, default=60)
p.add_argument("--max-tokens", type=int, default=32)
args = p.parse_args()

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Write a haiku about rain.", "What is the capital of France?",
           "Give me a word that rhymes with cat.", "Count from 1 to 5."]


async def client_loop(i, client, deadline, latencies, errors, tokens):
    k = 0
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            r = await client.chat.completions.create(
                model=args.model, messages=[{"role": "user", "content": PROMPTS[(i + k) % len(PROMPTS)]}],
                max_tokens=args.max_tokens, temperature=0.7, seed=i * 1000 + k)
            latencies.append(time.monotonic() - t0)
            tokens.append(r.usage.completion_tokens)
        except Exception as e:  # any failure counts; the first few are shown
            errors.append(repr(e))
        k += 1


async def main():
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=600,
                                http_client=None)
    latencies, errors, tokens = [], [], []
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    await asyncio.gather(*(client_loop(i, client, deadline, latencies, errors, tokens) for i in range(args.clients)))
    wall = time.monotonic() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    print(json.dumps({
        "clients": args.clients, "seconds": round(wall, 1), "requests": len(latencies), "errors": len(errors),
        "completion_tokens_per_s": round(sum(tokens) / wall, 1), "requests_per_s": round(len(latencies) / wall, 2),
        "p50_s": round(q[49], 2), "p99_s": round(q[98], 2), "first_errors": errors[:3],
    }))
    return 1 if errors or not latencies else 0


sys.exit(asyncio.run(main()))
