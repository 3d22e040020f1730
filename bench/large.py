#!/usr/bin/env python3
"""Real model sizes: LoRA training and inference of vlmsh on Llama-shaped random-weight GGUFs at
SmolLM2-1.7B's and LLaVA-1.5-7B's (text) shapes (bench/shapes.py makes and caches them; the
first run takes minutes per model).

Training: `vlmsh bench --train --seq 512 --batch 1 --steps 1 --lora-r 8 --gradient-checkpointing`
(LoRA r 8, alpha 16 on every q/k/v/o/gate/up/down projection, AdamW; one warm-up step, then the
timed step), seconds per step and the process's peak RSS. `--no-checkpointing` measures without
gradient checkpointing too (a 7B then needs far more memory).

Inference (`--inference`): bench/bench.py on each model, vlmsh (Float32 and int8 activations)
beside llama.cpp: prefill of 512 tokens and 32 decode steps, tokens per second. Then the time to
the first token of a 16-token prompt, as a person meets it: from starting a `vlmsh generate --ids …
--max-tokens 1` process, with the file already in the page cache, to its first output (mapping the
GGUF, building the model, the prefill and the first token), at the first load in a fresh
VLMSH_HOME (which then writes the interleaved-rows cache with int8 activations) and at later ones.

    python bench/large.py [--shape smollm2-1.7b,llava-1.5-7b] [--type q4_k_m] [--inference | --inference-only] [--json]
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402


def log(*x):
    print(*x, file=sys.stderr, flush=True)


def last_json(text):
    """The JSON object a tool printed: the whole output, else its last line that parses as one."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def train(a, model, checkpointing):
    cmd = [a.vlmsh, "bench", "--train", "--model", model, "--seq", str(a.seq), "--batch", "1", "--steps", str(a.steps),
           "--lora-r", "8", "--json"] + (["--gradient-checkpointing"] if checkpointing else [])
    env = dict(os.environ, VLMSH_THREADS=str(a.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    obj = last_json(p.stdout) if p.returncode == 0 else None
    if obj is None:
        lines = [l.strip() for l in p.stderr.splitlines() if l.strip()] or [f"exit status {p.returncode}"]
        return {"error": lines[-1]}
    steps = obj["step_seconds"]
    return {"seconds_per_step": sorted(steps)[len(steps) // 2], "peak_rss_bytes": obj["peak_rss_bytes"],
            "peak_rss_training_bytes": obj["peak_rss_training_bytes"], "losses": obj["losses"],
            "trainable_parameters": obj["trainable_parameters"]}


def inference(a, model, prefill, decode, rounds):
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py"), "--vlmsh", a.vlmsh,
           "--model", model, "--prefill", str(prefill), "--decode", str(decode), "--rounds", str(rounds),
           "--threads", str(a.threads), "--only", "vlmsh,vlmsh-int8,llamacpp", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    obj = last_json(p.stdout) if p.returncode == 0 else None
    if obj is None:
        return {"error": (p.stderr.strip().splitlines() or ["bench.py failed"])[-1]}
    out = {}
    for b, row in obj["backends"].items():
        out[b] = {k: row[k] for k in ["prefill_tokens_per_second", "decode_tokens_per_second"] if k in row}
        if "error" in row:
            out[b]["error"] = row["error"]
    return out


def first_token_seconds(a, model, activations):
    """Time from starting `vlmsh generate` (one token after a 16-id prompt, a fresh VLMSH_HOME) to
    its first byte of output: `first_load` for the first run (with int8 activations it then writes
    the interleaved-rows cache, and `first_load_exit` is when that process ends), `seconds` the
    best of two later ones (they map the cache). The GGUF is in the page cache for every run (the
    prefill/decode runs before read it)."""
    import shutil
    import tempfile
    import time
    cmd = [a.vlmsh, "generate", "--model", model, "--ids", ",".join(str(100 + i) for i in range(16)),
           "--max-tokens", "1", "--temperature", "0", "--activations", activations]
    home = tempfile.mkdtemp(prefix="vlmsh-first-token-")
    env = dict(os.environ, VLMSH_THREADS=str(a.threads), VLMSH_HOME=home)
    first, ended = [], []
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            p.stdout.read(1)
            first.append(time.perf_counter() - t0)
            _, err = p.communicate(timeout=3600)
            ended.append(time.perf_counter() - t0)
            if p.returncode != 0:
                return {"error": (err.decode().strip().splitlines() or [f"exit status {p.returncode}"])[-1]}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"first_load": first[0], "first_load_exit": ended[0], "seconds": min(first[1:])}


def gib(n):
    return n / 2**30


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vlmsh", default=".build/release/vlmsh", help="vlmsh binary (default: %(default)s)")
    ap.add_argument("--shape", default=",".join(shapes.SHAPES), help="comma list of " + ", ".join(shapes.SHAPES))
    ap.add_argument("--type", default="q4_k_m", help="comma list of " + ", ".join(shapes.TYPES) + " (default: %(default)s)")
    ap.add_argument("--seq", type=int, default=512, help="training tokens per sequence (default: 512)")
    ap.add_argument("--steps", type=int, default=1, help="timed training steps after the warm-up step (default: 1)")
    ap.add_argument("--threads", type=int, default=2, help="threads (default: 2)")
    ap.add_argument("--no-checkpointing", action="store_true", help="also train without gradient checkpointing")
    ap.add_argument("--inference", action="store_true", help="also prefill/decode beside llama.cpp and time to first token")
    ap.add_argument("--inference-only", action="store_true", help="--inference without the training step")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    a = ap.parse_args(argv)
    if not os.path.exists(a.vlmsh):
        ap.error(f"{a.vlmsh}: not found (build with `swift build -c release`)")
    kinds = [k for k in a.type.split(",") if k]
    result = []
    for shape in [s for s in a.shape.split(",") if s]:
        for kind, model in zip(kinds, shapes.ensure(shape, kinds)):
            row = {"shape": shape, "type": kind, "model": model, "file_bytes": os.path.getsize(model)}
            for checkpointing in [] if a.inference_only else [True] + ([False] if a.no_checkpointing else []):
                key = "train_checkpointing" if checkpointing else "train"
                log(f"[large] {shape} {kind}: LoRA training, seq {a.seq}{', gradient checkpointing' if checkpointing else ''}")
                row[key] = train(a, model, checkpointing)
                log(f"[large]   {row[key]}")
            if a.inference or a.inference_only:
                log(f"[large] {shape} {kind}: prefill/decode beside llama.cpp")
                row["inference"] = inference(a, model, 512, 32, 1)
                row["first_token_16"] = {b: first_token_seconds(a, model, act) for b, act in [("vlmsh", "f32"), ("vlmsh-int8", "int8")]}
                log(f"[large]   {row['inference']}  16-token prompt: {row['first_token_16']}")
            result.append(row)
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"LoRA r 8 on q/k/v/o/gate/up/down, batch 1 x seq {a.seq}, AdamW, {a.threads} threads (random-weight models of real shapes)")
    for row in result:
        name = f"{row['shape']} {row['type'].upper()} ({gib(row['file_bytes']):.1f} GiB)"
        for key, label in [("train_checkpointing", "gradient checkpointing"), ("train", "no checkpointing")]:
            t = row.get(key)
            if t is None:
                continue
            if "error" in t:
                print(f"{name:34} {label:23} failed: {t['error']}")
            else:
                print(f"{name:34} {label:23} {t['seconds_per_step']:8.1f} s/step  peak RSS {gib(t['peak_rss_bytes']):5.2f} GiB")
        inf = row.get("inference")
        if inf:
            for b, label in [("vlmsh", "vlmsh"), ("vlmsh-int8", "vlmsh int8"), ("llamacpp", "llama.cpp")]:
                r, first = inf.get(b, {}), row["first_token_16"].get(b, {})
                if "prefill_tokens_per_second" in r:
                    ttft = (f"  first token (16-token prompt, new process) {first['seconds']:5.2f} s"
                            f" ({first['first_load']:5.2f} s at the first load, which ends at {first['first_load_exit']:5.2f} s)"
                            ) if "seconds" in first else ""
                    print(f"{name:34} {label:23} prefill {r['prefill_tokens_per_second']:6.1f} tok/s  decode "
                          f"{r['decode_tokens_per_second']:5.2f} tok/s{ttft}")
                else:
                    print(f"{name:34} {label:23} unavailable: {r.get('error', inf.get('error', '?'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
