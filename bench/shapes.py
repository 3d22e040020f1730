#!/usr/bin/env python3
"""Llama-shaped GGUF models with random weights, at the sizes of real models, for the benches.

A shape is written first as f16 (normal weights, std 0.02, so activations stay finite through
every layer, each matrix a window of one pool of 16M draws; RMSNorm weights 1) with SmolLM2's tokenizer and chat template (the tokenizer.* keys
of the SmolLM2-135M GGUF vlmsh fetches), then quantized with llama.cpp's own quantizer
(llama-cpp-python's `llama_model_quantize`) to each asked type; the f16 is deleted afterwards.
Files are cached in $VLMSH_HOME/bench (default ~/.vlmsh/bench) and reused when present.

    python bench/shapes.py [--shape smollm2-1.7b,llava-1.5-7b] [--types q4_0,q4_k_m] [--out DIR]

prints one line per model: shape, type, path. `path(shape, type)` is the same for other scripts.
"""
import argparse
import os
import sys
import time

import numpy as np

VLMSH_HOME = os.environ.get("VLMSH_HOME", os.path.expanduser("~/.vlmsh"))
DEFAULT_OUT = os.path.join(VLMSH_HOME, "bench")
TOKENIZER_SOURCE = os.path.join(VLMSH_HOME, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# config.json values of the models whose shapes these are (vocabulary: SmolLM2's tokenizer).
SHAPES = {
    # HuggingFaceTB/SmolLM2-1.7B-Instruct (tied embeddings)
    "smollm2-1.7b": dict(hidden=2048, layers=24, heads=32, kv_heads=32, intermediate=8192, context=8192,
                         rope_theta=130000.0, eps=1e-5, tied=True),
    # liuhaotian/llava-v1.5-7b's language model (Vicuna-7B v1.5)
    "llava-1.5-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, context=4096,
                         rope_theta=10000.0, eps=1e-5, tied=False),
}
TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def path(shape, kind, out=DEFAULT_OUT):
    """Where the model of `shape` in `kind` (q4_0, q4_k_m or f16) is cached."""
    return os.path.join(out, f"{shape}-random.{kind.upper()}.gguf")


def log(*x):
    print(*x, file=sys.stderr, flush=True)


def write_f16(shape, target):
    """The f16 GGUF of `shape`, tensors streamed one at a time (a 7B is 13.5 GB)."""
    import gguf

    s = SHAPES[shape]
    reader = gguf.GGUFReader(TOKENIZER_SOURCE)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    d, f, hd = s["hidden"], s["intermediate"], s["hidden"] // s["heads"]
    tmp = target + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch="llama")
    for field in reader.fields.values():
        if field.name.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    writer.add_name(f"{shape} random weights")
    writer.add_context_length(s["context"])
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(f)
    writer.add_block_count(s["layers"])
    writer.add_head_count(s["heads"])
    writer.add_head_count_kv(s["kv_heads"])
    writer.add_rope_freq_base(s["rope_theta"])
    writer.add_layer_norm_rms_eps(s["eps"])
    writer.add_rope_dimension_count(hd)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    # (name, numpy shape [rows, cols] or [n]); norms are f32 ones, matrices f16 normal(0, 0.02).
    tensors = [("token_embd.weight", (vocab, d))]
    for i in range(s["layers"]):
        p = f"blk.{i}."
        tensors += [(p + "attn_norm.weight", (d,)), (p + "attn_q.weight", (s["heads"] * hd, d)),
                    (p + "attn_k.weight", (s["kv_heads"] * hd, d)), (p + "attn_v.weight", (s["kv_heads"] * hd, d)),
                    (p + "attn_output.weight", (d, s["heads"] * hd)), (p + "ffn_norm.weight", (d,)),
                    (p + "ffn_gate.weight", (f, d)), (p + "ffn_up.weight", (f, d)), (p + "ffn_down.weight", (d, f))]
    tensors.append(("output_norm.weight", (d,)))
    if not s["tied"]:
        tensors.append(("output.weight", (vocab, d)))
    for name, dims in tensors:
        dtype = np.float32 if len(dims) == 1 else np.float16
        writer.add_tensor_info(name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    # Each matrix is a window of one pool of normal draws at a random offset: drawing 7·10⁹
    # values one by one would take longer than the rest of the bench.
    rng = np.random.default_rng(1234)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(np.float16)
    for n, (name, dims) in enumerate(tensors):
        if len(dims) == 1:
            writer.write_tensor_data(np.ones(dims, dtype=np.float32))
            continue
        count = int(np.prod(dims))
        reps = -(-count // pool.size) + 1
        start = int(rng.integers(pool.size))
        values = np.tile(pool, reps)[start:start + count].reshape(dims)
        writer.write_tensor_data(values)
        del values
        if n % 45 == 0:
            log(f"[shapes] {shape} f16: {n + 1}/{len(tensors)} tensors")
    writer.close()
    os.replace(tmp, target)


_quiet = None


def quantize(source, target, kind):
    import ctypes

    import llama_cpp

    global _quiet
    if _quiet is None:
        # llama.cpp logs a line per tensor; the bench prints its own progress.
        _quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, TYPES[kind])
    params.nthread = os.cpu_count() or 1
    tmp = target + ".tmp"
    rc = llama_cpp.llama_model_quantize(source.encode(), tmp.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {source} -> {kind} returned {rc}")
    os.replace(tmp, target)


def ensure(shape, kinds, out=DEFAULT_OUT):
    """The cached models of `shape` in `kinds`, made when missing; returns their paths."""
    os.makedirs(out, exist_ok=True)
    missing = [k for k in kinds if not os.path.exists(path(shape, k, out))]
    if missing:
        f16 = path(shape, "f16", out)
        if not os.path.exists(f16):
            t0 = time.time()
            write_f16(shape, f16)
            log(f"[shapes] {shape} f16 written in {time.time() - t0:.0f} s")
        for k in missing:
            t0 = time.time()
            quantize(f16, path(shape, k, out), k)
            log(f"[shapes] {shape} {k} quantized in {time.time() - t0:.0f} s")
        os.remove(f16)
    return [path(shape, k, out) for k in kinds]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default=",".join(SHAPES), help="comma list of " + ", ".join(SHAPES))
    ap.add_argument("--types", default=",".join(TYPES), help="comma list of " + ", ".join(TYPES))
    ap.add_argument("--out", default=DEFAULT_OUT, help="cache folder (default: %(default)s)")
    a = ap.parse_args(argv)
    shapes = [x for x in a.shape.split(",") if x]
    kinds = [x for x in a.types.split(",") if x]
    bad = [x for x in shapes if x not in SHAPES] + [x for x in kinds if x not in TYPES]
    if bad:
        ap.error(f"unknown shape or type: {', '.join(bad)}")
    if not os.path.exists(TOKENIZER_SOURCE):
        ap.error(f"{TOKENIZER_SOURCE}: not found (make model fetches it)")
    for shape in shapes:
        for k, p in zip(kinds, ensure(shape, kinds, a.out)):
            print(f"{shape} {k} {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
