#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/: small valid inputs (tiny models in
every supported GGUF type, the test fixtures, the presets) and a few edge cases. Deterministic; run it from
anywhere. Inputs that a fuzz run found and that became regression tests are kept beside the seeds under their
own names (fuzz/corpus/<target>/crash-*), which this script leaves alone."""
import json
import math
import os
import struct

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def copy(target, name, src):
    with open(os.path.join(ROOT, src), "rb") as f:
        put(target, name, f.read())


# ------------------------------------------------------------------------------------------------ GGUF
F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 8, 12, 14, 30
# (elements per block, bytes per block)
LAYOUT = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22),
          Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gvalue(v):
    """(type id, payload) of a metadata value; ints are u32, floats f32, lists arrays of their first type."""
    if isinstance(v, bool):
        return 7, bytes([v])
    if isinstance(v, int):
        return 4, struct.pack("<I", v)
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, gstr(v)
    if isinstance(v, tuple):  # (explicit type id, packed payload)
        return v
    elem = [gvalue(x) for x in v]
    ty = elem[0][0] if elem else 8
    return 9, struct.pack("<IQ", ty, len(v)) + b"".join(p for _, p in elem)


def tensor_bytes(ggml_type, n, seed):
    """Deterministic data for n elements: small floats, or quant blocks with scale 1/64 and varied nibbles."""
    block, nbytes = LAYOUT[ggml_type]
    assert n % block == 0, (ggml_type, n)
    vals = [((i * 37 + seed * 11) % 19 - 9) / 16.0 for i in range(n)]
    if ggml_type == F32:
        return struct.pack(f"<{n}f", *vals)
    if ggml_type == F16:
        return struct.pack(f"<{n}e", *vals)
    if ggml_type == BF16:
        return b"".join(struct.pack("<f", v)[2:] for v in vals)
    out = bytearray()
    scale = struct.pack("<e", 1 / 64)
    for b in range(n // block):
        body = bytes((i * 29 + b * 7 + seed) % 256 for i in range(nbytes - 2))
        if ggml_type in (Q4_K, Q6_K):
            # Q4_K: d, dmin (f16) first; Q6_K: d (f16) last. Keep the f16 scales finite.
            body = bytes((i * 29 + b * 7 + seed) % 128 for i in range(nbytes - 4))
            out += scale + scale + body if ggml_type == Q4_K else body + scale + scale
        else:
            out += scale + body
    return bytes(out)


def gguf(meta, tensors, version=3, alignment=32):
    """tensors: (name, dims in GGUF order (contiguous first), type, data)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(meta))
    for k, v in meta:
        ty, payload = gvalue(v)
        out += gstr(k) + struct.pack("<I", ty) + payload
    offset, offsets = 0, []
    for _, _, _, data in tensors:
        offsets.append(offset)
        offset = (offset + len(data) + alignment - 1) // alignment * alignment
    for (name, dims, ty, _), off in zip(tensors, offsets):
        out += gstr(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", ty, off)
    for _, _, _, data in tensors:
        out += b"\0" * (-len(out) % alignment) + data
    return out


def tokenizer_meta(tokens, types, merges, extra=()):
    return [("tokenizer.ggml.model", "gpt2"), ("tokenizer.ggml.pre", "gpt2"),
            ("tokenizer.ggml.tokens", tokens), ("tokenizer.ggml.token_type", (9, struct.pack("<IQ", 5, len(types))
                                                                                + struct.pack(f"<{len(types)}i", *types))),
            ("tokenizer.ggml.merges", merges), ("tokenizer.ggml.bos_token_id", 0),
            ("tokenizer.ggml.eos_token_id", len(tokens) - 1), *extra]


def model(arch, d, ff, heads, kv, hd, vocab, types, bias=False, qk_norm=False, tied=True, extra_meta=()):
    """A one-layer model; `types` maps a GGUF tensor role to its ggml type (default F32)."""
    meta = [("general.architecture", arch), (f"{arch}.block_count", 1), (f"{arch}.context_length", 64),
            (f"{arch}.embedding_length", d), (f"{arch}.feed_forward_length", ff),
            (f"{arch}.attention.head_count", heads), (f"{arch}.attention.head_count_kv", kv),
            (f"{arch}.attention.key_length", hd), (f"{arch}.rope.freq_base", 10000.0),
            (f"{arch}.attention.layer_norm_rms_epsilon", 1e-5), *extra_meta]
    tokens = ["a", "b", "ab", "\u0120", "<|im_end|>"][:vocab]
    meta += tokenizer_meta(tokens, [1] * (vocab - 1) + [3], ["a b"],
                           [("tokenizer.ggml.add_bos_token", True),
                            ("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}")])
    q, k = heads * hd, kv * hd
    shapes = [("token_embd.weight", [d, vocab]), ("output_norm.weight", [d])]
    if not tied:
        shapes.append(("output.weight", [d, vocab]))
    layer = [("attn_norm.weight", [d]), ("attn_q.weight", [d, q]), ("attn_k.weight", [d, k]),
             ("attn_v.weight", [d, k]), ("attn_output.weight", [q, d]), ("ffn_norm.weight", [d]),
             ("ffn_gate.weight", [d, ff]), ("ffn_up.weight", [d, ff]), ("ffn_down.weight", [ff, d])]
    if bias:
        layer += [("attn_q.bias", [q]), ("attn_k.bias", [k]), ("attn_v.bias", [k])]
    if qk_norm:
        layer += [("attn_q_norm.weight", [hd]), ("attn_k_norm.weight", [hd])]
    shapes += [("blk.0." + n, s) for n, s in layer]
    tensors = []
    for i, (name, dims) in enumerate(shapes):
        ty = types.get(name.removeprefix("blk.0."), F32)
        n = 1
        for x in dims:
            n *= x
        tensors.append((name, dims, ty, tensor_bytes(ty, n, i)))
    return meta, tensors


def llama3_divisor(wavelength, old, low, high, factor):
    """What Llama 3 rope scaling divides a frequency by (src/gguf/load.rs has the same)."""
    if wavelength < old / high:
        return 1.0
    if wavelength > old / low:
        return factor
    smooth = (old / wavelength - low) / (high - low)
    return 1.0 / ((1.0 - smooth) / factor + smooth)


def gguf_seeds():
    meta, tensors = model("llama", d=2, ff=2, heads=1, kv=1, hd=2, vocab=5, types={})
    put("gguf", "llama-f32.gguf", gguf(meta, tensors))
    put("gguf", "llama-f32-v2.gguf", gguf(meta, tensors, version=2))
    meta, tensors = model("qwen3", d=4, ff=2, heads=2, kv=1, hd=2, vocab=4, qk_norm=True, tied=False,
                          types={"token_embd.weight": F16, "output.weight": BF16, "ffn_down.weight": F16})
    put("gguf", "qwen3-f16-bf16.gguf", gguf(meta, tensors))
    quant = {"token_embd.weight": Q8_0, "attn_q.weight": Q4_0, "attn_k.weight": Q4_1, "attn_v.weight": Q5_0,
             "attn_output.weight": Q8_0, "ffn_gate.weight": Q4_0, "ffn_up.weight": Q4_1, "ffn_down.weight": Q5_0,
             "output.weight": BF16}
    meta, tensors = model("qwen2", d=32, ff=32, heads=2, kv=1, hd=16, vocab=4, bias=True, tied=False, types=quant)
    put("gguf", "qwen2-q4-q5-q8.gguf", gguf(meta, tensors))
    # K-quants need 256-element rows: a llama whose embedding is Q4_K and final norm Q6_K (d = 256, vocab 1 row).
    meta, tensors = model("llama", d=256, ff=2, heads=1, kv=1, hd=2, vocab=2, types={})
    tensors[0] = ("token_embd.weight", [256, 2], Q4_K, tensor_bytes(Q4_K, 512, 1))
    tensors[1] = ("output_norm.weight", [256], Q6_K, tensor_bytes(Q6_K, 256, 2))
    put("gguf", "k-quants.gguf", gguf(meta, tensors[:2]))
    # Llama 3 rope scaling lives in a rope_freqs tensor of per-frequency divisors.
    meta, tensors = model("llama", d=16, ff=2, heads=1, kv=1, hd=16, vocab=3, types={})
    freqs = [llama3_divisor(2 * math.pi * 10000.0 ** (2 * i / 16), old=64, low=1.0, high=4.0, factor=8.0)
             for i in range(8)]
    tensors.append(("rope_freqs.weight", [8], F32, struct.pack("<8f", *freqs)))
    put("gguf", "llama-rope-freqs.gguf", gguf(meta, tensors))
    # Every metadata value type, nested arrays, and no tensors.
    every = [("u8", (0, b"\x07")), ("i8", (1, b"\xf9")), ("u16", (2, b"\x01\x02")), ("i16", (3, b"\xff\xff")),
             ("u32", 5), ("i32", (5, struct.pack("<i", -5))), ("f32", 0.5), ("bool", True), ("str", "s"),
             ("arr", [[1, 2], [3]]), ("u64", (10, struct.pack("<Q", 1 << 40))), ("i64", (11, struct.pack("<q", -1))),
             ("f64", (12, struct.pack("<d", 0.25))), ("general.alignment", 64)]
    put("gguf", "metadata-types.gguf", gguf(every, [], alignment=64))
    put("gguf", "empty-v3.gguf", gguf([], []))
    put("gguf", "truncated.gguf", gguf(meta, tensors)[:200])


# ----------------------------------------------------------------------------------------- safetensors
def safetensors(entries, metadata=None, pad_to=8):
    """entries: (name, dtype, shape, data bytes)."""
    header, off = {}, 0
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % pad_to)
    return struct.pack("<Q", len(h)) + h + b"".join(e[3] for e in entries)


def safetensors_seeds():
    put("safetensors", "f32-f16-bf16.safetensors", safetensors([
        ("model.embed_tokens.weight", "F32", [2, 2], tensor_bytes(F32, 4, 0)),
        ("model.norm.weight", "F16", [3], tensor_bytes(F16, 3, 1)),
        ("lm_head.weight", "BF16", [1, 1], tensor_bytes(BF16, 1, 2)),
    ], metadata={"format": "pt"}))
    put("safetensors", "scalar-and-empty.safetensors", safetensors([
        ("s", "F32", [], tensor_bytes(F32, 1, 3)), ("z", "F16", [0, 5], b""),
    ]))
    put("safetensors", "unsupported-dtype.safetensors", safetensors([("i", "I64", [2], struct.pack("<2q", 1, -1))]))
    put("safetensors", "no-tensors.safetensors", safetensors([]))


# ---------------------------------------------------------------------------------------- config.json
def config_seeds():
    for arch in ("llama", "qwen2", "qwen3"):
        copy("config_json", f"tiny-{arch}.json", f"tests/data/tiny-{arch}/config.json")
    base = {"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
    put("config_json", "minimal.json", json.dumps(base))
    put("config_json", "rope-scaling-old-style.json", json.dumps({
        **base, "model_type": "llama", "rope_theta": 500000.0, "eos_token_id": [1, 2], "bos_token_id": 0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}, "tie_word_embeddings": True}))
    put("config_json", "sliding-window.json", json.dumps({**base, "use_sliding_window": True, "sliding_window": 4}))


# ------------------------------------------------------------------------------------- tokenizer.json
def tokenizer_seeds():
    copy("tokenizer_json", "wordlevel-tiny-llama.json", "tests/data/tiny-llama/tokenizer.json")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    vocab = {c: i for i, c in enumerate(["a", "b", "ab", "\u0120", "H", "e", "l", "o", "<|im_end|>"])}
    bpe = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": 8, "content": "<|im_end|>", "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}],
           "normalizer": {"type": "NFC"},
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
               {"type": "Split", "pattern": {"Regex": r"\p{N}{1,3}| ?\p{L}+|\s+"}, "behavior": "Isolated",
                "invert": False},
               {**byte_level, "use_regex": False}]},
           "post_processor": {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "a", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                       {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"a": {"id": "a", "ids": [0], "tokens": ["a"]}}},
           "decoder": byte_level,
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": vocab, "merges": [["a", "b"]]}}
    put("tokenizer_json", "bpe-byte-level.json", json.dumps(bpe))
    put("tokenizer_json", "unigram.json", json.dumps({
        "version": "1.0", "added_tokens": [], "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "post_processor": None, "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                                            "split": True},
        "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["\u2581", -1.0], ["h", -2.0], ["i", -2.0],
                                                          ["hi", -1.5]], "byte_fallback": False}}))
    put("tokenizer_json", "wordpiece.json", json.dumps({
        "version": "1.0", "added_tokens": [], "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                                            "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"}, "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "he": 1, "##llo": 2, "hi": 3}}}))


# ---------------------------------------------------------------------------------------- run config
def run_config_seeds():
    for name in ("mathchat", "dsbench", "quickstart"):
        copy("run_config", f"{name}.toml", f"src/presets/{name}.toml")
    put("run_config", "minimal.toml", """[run]
name = "m"
base_model = "model.gguf"

[[agents]]
name = "solver"
prompt = "{{ task }} {{ previous }}"

[coach]
backend = "rule"

[data]
train = "train.jsonl"
""")


# ------------------------------------------------------------------------------------------ task JSONL
def tasks_seeds():
    copy("tasks_jsonl", "gsm8k-test.jsonl", "src/presets/gsm8k_quickstart_test.jsonl")
    put("tasks_jsonl", "fields.jsonl", "\n".join([
        '{"meta": {"id": "x-1"}, "problem": "What is 1+1?", "answer": 2}',
        '',
        '{"meta": {"id": 7}, "problem": "Roots?", "answer": ["1", -1.5]}',
        '{"problem": "No id: the line number is the id.", "solution": {"value": "\\\\frac{1}{2}"}}',
        '{"meta": {"id": "x-2"}, "problem": "\\u00e9t\\u00e9", "answer": null, "solution": {"value": 3}}',
    ]) + "\n")
    put("tasks_jsonl", "errors.jsonl", '{"meta": {"id": "d"}, "problem": "p", "answer": "1"}\n'
                                       '{"meta": {"id": "d"}, "problem": "p", "answer": []}\n[1]\n')


# ------------------------------------------------------------------------------------------ dictionaries
def write_dict(target, words):
    """AFL++ dictionary fuzz/dict/<target>.dict: tokens the mutator splices in (keys, type names)."""
    os.makedirs(os.path.join(FUZZ, "dict"), exist_ok=True)
    with open(os.path.join(FUZZ, "dict", f"{target}.dict"), "w") as f:
        for w in sorted(set(words)):
            f.write('"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"\n')


def source_words(path, pattern):
    import re
    with open(os.path.join(ROOT, path)) as f:
        return re.findall(pattern, f.read())


def dictionaries():
    gguf_keys = source_words("src/gguf/load.rs", r'"([a-z_][a-z_.]*)"') + \
        source_words("src/gguf/tokenizer.rs", r'"(tokenizer\.[a-z_.]+)"')
    arch_keys = [f"{a}.{k}" for a in ("llama", "qwen2", "qwen3") for k in (
        "embedding_length", "attention.head_count", "attention.head_count_kv", "attention.key_length",
        "attention.value_length", "feed_forward_length", "block_count", "context_length", "vocab_size",
        "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.dimension_count", "rope.scaling.type")]
    tensor_names = ["token_embd.weight", "output_norm.weight", "output.weight", "rope_freqs.weight"] + [
        f"blk.0.{p}.{k}" for p in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm",
                                   "attn_k_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
        for k in ("weight", "bias")]
    pre = ["gpt2", "smollm", "starcoder", "refact", "gpt-2", "default", "llama-bpe", "llama3", "llama-v3", "qwen2",
           "deepseek-r1-qwen", "llama", "qwen3"]
    write_dict("gguf", ["GGUF", "general.architecture", "general.alignment"] + gguf_keys + arch_keys + tensor_names
               + pre)
    write_dict("safetensors", ["dtype", "shape", "data_offsets", "__metadata__", "format", "pt", "F32", "F16",
                               "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "model.embed_tokens.weight",
                               "lm_head.weight", "model.norm.weight"])
    write_dict("config_json", source_words("src/config.rs", r'"([a-z_]+)"') + [
        "qwen2", "qwen3", "llama3", "linear", "dynamic", "yarn", "sliding_window", "max_window_layers", "null",
        "true", "false", "1e-06", "-1", "4294967295", "1e309", "1.0e38"])
    write_dict("tokenizer_json", [
        "type", "version", "1.0", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder",
        "model", "vocab", "merges", "unk_token", "unk_id", "byte_fallback", "ignore_merges", "dropout", "fuse_unk",
        "continuing_subword_prefix", "end_of_word_suffix", "max_input_chars_per_word", "id", "content",
        "single_word", "lstrip", "rstrip", "normalized", "special", "BPE", "WordLevel", "WordPiece", "Unigram",
        "ByteLevel", "Sequence", "Split", "Regex", "String", "pattern", "behavior", "Isolated", "Removed",
        "MergedWithPrevious", "MergedWithNext", "Contiguous", "invert", "Whitespace", "WhitespaceSplit",
        "Punctuation", "Digits", "individual_digits", "Metaspace", "replacement", "prepend_scheme", "split",
        "always", "first", "never", "add_prefix_space", "trim_offsets", "use_regex", "NFC", "NFD", "NFKC", "NFKD",
        "Lowercase", "Strip", "StripAccents", "Replace", "Prepend", "prepend", "Precompiled", "precompiled_charsmap",
        "BertNormalizer", "BertPreTokenizer", "ByteFallback", "Fuse", "CTC", "TemplateProcessing", "RobertaProcessing",
        "BertProcessing", "single", "pair", "special_tokens", "SpecialToken", "type_id", "ids", "tokens", "cleanup",
        "prefix", "truncation", "padding", "<|im_end|>", "<|im_start|>", "\u0120", "\u2581", "##"])
    write_dict("run_config", ["[run]", "[[agents]]", "[agents.sampling]", "[coach]", "[data]", "[data.stage_files]",
                              "[rl]", "[sandbox]", "{{ task }}", "{{ previous.", "{{ tool_results.", "{{ record.",
                              "{{ files }}", "{{ agent }}", "{{ role }}", "{% for", "{% endfor %}", "{% if",
                              "{% endif %}", "python", "http", "local", "rule", "auto", "cpu", "cuda", "k1", "k2",
                              "k3", "cosine", "constant", "token-mean", "seq-mean-token-sum", "episode", "agent",
                              "nan", "inf", "-inf", "1e400", "18446744073709551615", "true", "false"]
               + source_words("src/run_config/mod.rs", r"\n\s+pub ([a-z_]+):")
               + source_words("src/run_config/mod.rs", r'rename = "([a-z_-]+)"'))
    write_dict("tasks_jsonl", ["meta", "id", "problem", "answer", "solution", "value", "null", "true", "[]", "{}",
                               "1e999", "-0", "\\u0000", "\\ud800"])


if __name__ == "__main__":
    for target in ("gguf", "safetensors", "config_json", "tokenizer_json", "run_config", "tasks_jsonl"):
        d = os.path.join(CORPUS, target)
        if os.path.isdir(d):
            for f in os.listdir(d):
                if not f.startswith("crash-"):
                    os.remove(os.path.join(d, f))
    gguf_seeds()
    safetensors_seeds()
    config_seeds()
    tokenizer_seeds()
    run_config_seeds()
    tasks_seeds()
    dictionaries()
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(CORPUS) for f in fs)
    print(f"corpus: {total} bytes in {CORPUS}")
