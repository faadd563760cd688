"""Device memory of `mappa serve` over many requests (issue 10: no growth over 200 requests). Python's
standard library only, so it runs on the device machine as it is.

Starts `mappa serve --device cuda` on a free port, sends REQUESTS chat completions from CLIENTS threads
(prompts of mixed lengths, sampled, each with its own seed), and reads the GPU's used memory (nvidia-smi)
after the first WARMUP requests and after the last. The server's buffers grow to the largest step they
have seen, and every prompt length and batch size recurs after the warm-up, so the two readings must agree
within TOLERANCE_MIB (nvidia-smi's granularity). Prints one JSON line; exit status 1 on growth, on any failed
request, or when the server does not start.

    python3 tools/serve_memory.py BIN MODEL [--requests 200] [--warmup 50] [--clients 8]
"""
import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

TOLERANCE_MIB = 2
PROMPTS = ["What is 2 + 3?", "Name a colour.", "Write a haiku about rain.",
           "Apples are red. Bananas are yellow. The sky is blue. " * 12 + "Which fruit is yellow?",
           "List three animals that live in the sea and say one thing about each of them.",
           "Grass is green. " * 40 + "What colour is grass?"]


def used_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bin")
    p.add_argument("model")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--device", default="cuda", help="cpu: only to try the script where there is no GPU")
    args = p.parse_args()

    server = subprocess.Popen([args.bin, "serve", "--model", args.model, "--device", args.device, "--port", "0",
                               "--name", "m"], stderr=subprocess.PIPE, text=True)
    try:
        port, deadline = None, time.monotonic() + 300
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            if not line:
                sys.exit(f"serve_memory: the server exited before it listened (status {server.wait()})")
            sys.stderr.write(line)
            m = re.search(r"127\.0\.0\.1:(\d+)", line)
            port = m and int(m.group(1))
        if port is None:
            sys.exit("serve_memory: the server did not say where it listens within 300 s")
        threading.Thread(target=lambda: [sys.stderr.write(l) for l in server.stderr], daemon=True).start()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"

        errors, done, lock = [], [0], threading.Lock()

        def send(k):
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
                               "max_tokens": 8 + 8 * (k % 5), "temperature": 0.7, "seed": k}).encode()
            req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    json.load(r)["choices"][0]["message"]["content"]
            except Exception as e:  # any failure counts
                with lock:
                    errors.append(f"request {k}: {e!r}")

        def batch(first, last):
            ks = iter(range(first, last))
            def worker():
                while True:
                    with lock:
                        k = next(ks, None)
                    if k is None:
                        return
                    send(k)
            threads = [threading.Thread(target=worker) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        batch(0, args.warmup)
        after_warmup = used_mib()
        batch(args.warmup, args.requests)
        after_all = used_mib()
        growth = after_all - after_warmup
        print(json.dumps({"bench": "serve_memory", "requests": args.requests, "warmup": args.warmup,
                          "clients": args.clients, "used_mib_after_warmup": after_warmup,
                          "used_mib_after_all": after_all, "growth_mib": growth, "errors": len(errors)}))
        for e in errors[:5]:
            print(e, file=sys.stderr)
        sys.exit(1 if errors or growth > TOLERANCE_MIB else 0)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
