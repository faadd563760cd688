"""Drives `mappa serve` with the official OpenAI Python client (run by tests/serve_openai.rs, which starts the
server and passes its base URL and model id). Each check raises on a mismatch; the script exits non-zero then.

Checks what agent frameworks and harnesses call first: the model list, chat completions plain and streamed,
`n` choices, seeds, log-probs whose bytes rebuild the text with their top alternatives, stop strings, usage,
and errors that the client turns into its typed exceptions with the offending `param`; and the legacy text
completions an evaluation harness uses: plain, `echo` with prompt log-probs at `max_tokens=0` (scoring),
`logprobs=5` alternatives, `n` with a seed, streamed. Structured outputs: a `json_schema` response that parses
and validates against its schema (a small hand-written check). Tools, on a second server whose model has a
Qwen-style template: a forced call parsed into `tool_calls`, streamed too, and the conversation going on
with the assistant's call and a `role: "tool"` answer.
"""
import argparse
import json
import sys

import openai

p = argparse.ArgumentParser()
p.add_argument("--base-url", required=True)
p.add_argument("--model", required=True)
p.add_argument("--tools-base-url", required=True)
p.add_argument("--tools-model", required=True)
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

# top_logprobs: alternatives sorted, the greedy token first, its log-prob its own entry's.
r = client.chat.completions.create(model=args.model, messages=messages, temperature=0, max_tokens=12, logprobs=True,
                                   top_logprobs=3)
content = r.choices[0].logprobs.content
check(content and r.choices[0].message.content == greedy[: len(r.choices[0].message.content)], f"top: {r}")
for t in content:
    alts = t.top_logprobs
    check(len(alts) == 3, f"three alternatives: {t}")
    check(all(a.logprob >= b.logprob for a, b in zip(alts, alts[1:])), f"sorted: {alts}")
    check(alts[0].token == t.token and alts[0].logprob == t.logprob, f"greedy takes the first: {t}")
r = client.chat.completions.create(model=args.model, messages=messages, seed=3, max_tokens=12, logprobs=True,
                                   top_logprobs=2)
for t in r.choices[0].logprobs.content:
    check(t.logprob <= t.top_logprobs[0].logprob, f"sampled below the best: {t}")
    own = [a for a in t.top_logprobs if a.bytes == t.bytes]
    check(not own or own[0].logprob == t.logprob, f"the sampled token's own entry: {t}")
streamed = []
for chunk in client.chat.completions.create(model=args.model, messages=messages, seed=3, max_tokens=12,
                                            logprobs=True, top_logprobs=2, stream=True):
    for c in chunk.choices:
        streamed += c.logprobs.content if c.logprobs and c.logprobs.content else []
check([(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in r.choices[0].logprobs.content],
      "log-probs streamed with their tokens")

# Text completions.
prompt = "The capital of France is"
c = client.completions.create(model=args.model, prompt=prompt, max_tokens=8, temperature=0)
check(c.object == "text_completion" and c.choices[0].text and c.choices[0].logprobs is None, f"completion: {c}")
plain = c.choices[0].text

# Scoring as lm-eval-harness does: echo, max_tokens=0, logprobs; the first token has no log-prob.
s = client.completions.create(model=args.model, prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0)
lp = s.choices[0].logprobs
check(s.choices[0].text == prompt, f"echo: {s.choices[0].text!r}")
check("".join(lp.tokens) == prompt and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, f"echo: {lp}")
check(all(x is not None and x <= 0 for x in lp.token_logprobs[1:]), f"prompt log-probs: {lp.token_logprobs}")
check(lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))], f"offsets: {lp.text_offset}")
check(all(d[t] == x for t, x, d in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:])),
      "each token's own log-prob in its dict")
check(s.usage.completion_tokens == 0 and s.usage.prompt_tokens == len(lp.tokens), f"usage: {s.usage}")
ids = client.completions.create(model=args.model, prompt=[[1, 2, 3]], max_tokens=0, echo=True, logprobs=0)
check(len(ids.choices[0].logprobs.tokens) == 3, f"token-id prompt: {ids}")

# logprobs=5: five alternatives plus the sampled token at most; greedy takes the best.
g = client.completions.create(model=args.model, prompt=prompt, max_tokens=8, logprobs=5, temperature=0)
lp = g.choices[0].logprobs
check(g.choices[0].text == plain and "".join(lp.tokens) == plain, f"logprobs=5: {g}")
for t, x, d in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
    check(5 <= len(d) <= 6 and d[t] == x == max(d.values()), f"alternatives of {t!r}: {d}")

# n=2 with a seed: two samples, reproducible.
def two():
    return client.completions.create(model=args.model, prompt=prompt, max_tokens=8, n=2, seed=11)


texts = [c.text for c in two().choices]
check(texts == [c.text for c in two().choices] and texts[0] != texts[1], f"n=2 seeded: {texts}")

# Streamed: the same text.
pieces = [ch.choices[0].text for ch in client.completions.create(model=args.model, prompt=prompt, max_tokens=8,
                                                                  temperature=0, stream=True) if ch.choices]
check("".join(pieces) == plain, f"stream {''.join(pieces)!r} vs {plain!r}")

# Errors become the client's typed exceptions, naming the field.
for kwargs, param in [({"temperature": 3}, "temperature"), ({"logit_bias": {"5": 1}}, "logit_bias"),
                      ({"n": 0}, "n"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs")]:
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
try:
    client.completions.create(model=args.model, prompt=prompt, max_tokens=1, logprobs=21)
    raise AssertionError("logprobs=21 was accepted")
except openai.BadRequestError as e:
    check(e.body["param"] == "logprobs", f"logprobs=21: {e.body}")



def validate(value, schema, path="$"):
    """The few JSON-schema keywords the schemas below use: type, enum, minimum/maximum, properties,
    required, additionalProperties: false."""
    kinds = {"object": dict, "integer": int, "boolean": bool, "string": str}
    if "enum" in schema:
        check(value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        ok = isinstance(value, kinds[schema["type"]])
        if schema["type"] == "integer":
            ok = ok and not isinstance(value, bool)
        check(ok, f"{path}: {value!r} is not {schema['type']}")
    if "minimum" in schema:
        check(value >= schema["minimum"], f"{path}: {value} < {schema['minimum']}")
    if "maximum" in schema:
        check(value <= schema["maximum"], f"{path}: {value} > {schema['maximum']}")
    for key in schema.get("required", []):
        check(key in value, f"{path}: {key} missing")
    props = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        check(set(value) <= set(props), f"{path}: extra keys {set(value) - set(props)}")
    for key, sub in props.items():
        if key in value:
            validate(value[key], sub, f"{path}.{key}")


# The second server: the same tiny model with a Qwen-style template (tools) and a context of 1024.
tclient = openai.OpenAI(base_url=args.tools_base_url, api_key="unused", max_retries=0, timeout=120)

# Structured output: a json_schema response parses and validates, plain and streamed (on the second
# server, whose context leaves a random model room to complete the object).
schema = {
    "type": "object",
    "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 999},
                   "colour": {"enum": ["red", "green"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "colour", "sure"],
    "additionalProperties": False,
}
fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
r = tclient.chat.completions.create(model=args.tools_model, messages=messages, max_tokens=400, seed=5,
                                    response_format=fmt)
check(r.choices[0].finish_reason == "stop", f"json_schema finish: {r.choices[0]}")
answer = json.loads(r.choices[0].message.content)
validate(answer, schema)
pieces = [c.choices[0].delta.content or "" for c in tclient.chat.completions.create(
    model=args.tools_model, messages=messages, max_tokens=400, seed=5, response_format=fmt, stream=True) if c.choices]
check(json.loads("".join(pieces)) == answer, f"streamed json_schema: {''.join(pieces)!r}")

# Tools: a forced call comes back as tool_calls, and the conversation goes on with a tool message.
weather = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
force = {"type": "function", "function": {"name": "get_weather"}}
r = tclient.chat.completions.create(model=args.tools_model, messages=ask, tools=[weather], tool_choice=force,
                                    max_tokens=80, seed=3)
call_msg = r.choices[0].message
check(r.choices[0].finish_reason == "tool_calls" and call_msg.tool_calls, f"tool call: {r}")
call = call_msg.tool_calls[0]
check(call.type == "function" and call.function.name == "get_weather" and call.id, f"call: {call}")
validate(json.loads(call.function.arguments), weather["function"]["parameters"])
streamed_calls = {}
for chunk in tclient.chat.completions.create(model=args.tools_model, messages=ask, tools=[weather], tool_choice=force,
                                             max_tokens=80, seed=3, stream=True):
    for c in chunk.choices:
        for d in c.delta.tool_calls or []:
            entry = streamed_calls.setdefault(d.index, {"name": "", "arguments": ""})
            entry["name"] += d.function.name or ""
            entry["arguments"] += d.function.arguments or ""
check(streamed_calls == {0: {"name": "get_weather", "arguments": call.function.arguments}},
      f"streamed call: {streamed_calls}")
follow = ask + [call_msg, {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}]
r = tclient.chat.completions.create(model=args.tools_model, messages=follow, tools=[weather], max_tokens=8,
                                    temperature=0)
check(isinstance(r.choices[0].message.content, str) and r.usage.prompt_tokens > 0, f"after the tool: {r}")
try:
    client.chat.completions.create(model=args.model, messages=messages, tools=[weather], max_tokens=4)
    raise AssertionError("tools were accepted by a template without tool support")
except openai.BadRequestError as e:
    check(e.body["param"] == "tools" and "no tool support" in e.body["message"], f"no tool support: {e.body}")

print("openai client checks passed")
sys.exit(0)
