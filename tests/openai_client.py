"""Drives `mappa serve` with the official OpenAI Python client (run by tests/serve_openai.rs, which starts the
server and passes its base URL and model id). Each check raises on a mismatch; the script exits non-zero then.

Checks what agent frameworks and harnesses call first: the model list, chat completions plain and streamed,
`n` choices, seeds, log-probs whose bytes rebuild the text, stop strings, usage, and errors that the client
turns into its typed exceptions with the offending `param`.
"""
import argparse
import sys

import openai

p = argparse.ArgumentParser()
p.add_argument("--base-url", required=True)
p.add_argument("--model", required=True)
args = p.parse_args()

client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=120)
messages = [{"role": "user", "content": "Tell me about the sea."}]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


models = client.models.list()
check([m.id for m in models.data] == [args.model], f"models: {models}")
check(client.models.retrieve(args.model).id == args.model, "models.retrieve")

# Greedy, with log-probs: the tokens' bytes spell the content exactly.
r = client.chat.completions.create(model=args.model, messages=messages, temperature=0, max_tokens=16, logprobs=True)
choice = r.choices[0]
check(choice.message.role == "assistant" and choice.message.content, f"content: {r}")
check(choice.finish_reason in ("stop", "length"), f"finish_reason: {choice.finish_reason}")
spelled = b"".join(bytes(t.bytes) for t in choice.logprobs.content)
check(spelled == choice.message.content.encode(), f"logprob bytes {spelled!r} vs {choice.message.content!r}")
check(all(t.logprob <= 0 for t in choice.logprobs.content), "log-probs are <= 0")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, f"usage: {r.usage}")
greedy = choice.message.content

# Streamed: the same text, piece by piece, with the usage at the end.
pieces, finish, usage = [], None, None
for chunk in client.chat.completions.create(
    model=args.model, messages=messages, temperature=0, max_tokens=16, stream=True,
    stream_options={"include_usage": True},
):
    for c in chunk.choices:
        pieces.append(c.delta.content or "")
        finish = c.finish_reason or finish
    usage = chunk.usage or usage
check("".join(pieces) == greedy, f"stream {''.join(pieces)!r} vs {greedy!r}")
check(finish == choice.finish_reason and usage == r.usage, f"stream end: {finish} {usage}")

# n choices with a seed: reproducible, and each choice its own sample.
def sampled():
    return client.chat.completions.create(model=args.model, messages=messages, n=3, seed=7, max_tokens=12)


first = sampled()
check([c.index for c in first.choices] == [0, 1, 2], f"indices: {first.choices}")
texts = [c.message.content for c in first.choices]
check(texts == [c.message.content for c in sampled().choices], "seeded choices repeat")
check(len(set(texts)) > 1, f"three samples should not all agree: {texts}")

# A stop string cuts the content before it.
stop = greedy[len(greedy) // 2:][:2]
if stop.strip():
    cut = client.chat.completions.create(model=args.model, messages=messages, temperature=0, max_tokens=16, stop=[stop])
    check(cut.choices[0].message.content == greedy[: greedy.find(stop)], f"stop {stop!r}: {cut.choices[0]}")
    check(cut.choices[0].finish_reason == "stop", "finish_reason of a stop string")

# Errors become the client's typed exceptions, naming the field.
for kwargs, param in [({"temperature": 3}, "temperature"), ({"logit_bias": {"5": 1}}, "logit_bias"),
                      ({"n": 0}, "n")]:
    try:
        client.chat.completions.create(model=args.model, messages=messages, max_tokens=4, **kwargs)
        raise AssertionError(f"{kwargs} was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body["param"] == param, f"{kwargs}: {e.body}")
try:
    client.chat.completions.create(model="not-" + args.model, messages=messages, max_tokens=4)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    check(e.body["code"] == "model_not_found", f"unknown model: {e.body}")

print("openai client checks passed")
sys.exit(0)
