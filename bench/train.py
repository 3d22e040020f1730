#!/usr/bin/env python3
"""LoRA training throughput: vlmsh beside PyTorch + PEFT on the same model, the same data and the
same settings, interleaved rounds in one run; tokens per second and peak memory of each.

Both sides: LoRA r (default 8), alpha 2r, dropout 0 on every q/k/v/o/gate/up/down projection of
the fp32 model (vlmsh dequantizes the GGUF's weights to float32 for training, transformers
dequantizes them at load), synthetic batches of --batch sequences of --seq token ids whose labels
are the inputs (every position trained, Hugging Face's causal-LM shift), AdamW lr 1e-4 without
weight decay, gradients clipped to norm 1, one warm-up step then --steps timed optimizer steps.
Where the CPU has AVX512-BF16, each side also runs in bfloat16: vlmsh --bf16 (products of
bfloat16 operands summed in Float32) and PyTorch's forward under bf16 autocast, as the Hugging
Face Trainer runs bf16 on a CPU. Each backend runs in its own process every round (peak RSS is
per process); a round runs vlmsh, then PyTorch. See bench/README.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

DEFAULT_MODEL = os.path.expanduser("~/.vlmsh/models/SmolLM2-135M-Instruct.Q4_1.gguf")
BACKENDS = ["vlmsh", "vlmsh-bf16", "torch", "torch-bf16"]
LABELS = {"vlmsh": "vlmsh", "vlmsh-bf16": "vlmsh --bf16", "torch": "PyTorch + PEFT fp32",
          "torch-bf16": "PyTorch + PEFT bf16"}


def has_bf16_instructions():
    """vlmsh --bf16 multiplies in bfloat16 only where the CPU has AVX512-BF16 (and PyTorch's
    bf16 autocast is slow without it)."""
    try:
        return "avx512_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        return False
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MASK = (1 << 64) - 1


class SplitMix64:
    """vlmsh's SeededRandom, so both sides train on the same token ids."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def synthetic_batches(steps, batch, seq, vocab, seed):
    """What `vlmsh bench --train` draws: step by step, row by row, 1000 + next() % (vocab - 2000)."""
    rng = SplitMix64(seed)
    span = max(vocab - 2000, 1)
    return [[[1000 + rng.next() % span for _ in range(seq)] for _ in range(batch)] for _ in range(steps)]


def peak_rss_bytes():
    """Peak RSS since the last reset_peak (Linux VmHWM), else the lifetime maximum."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return max_rss_bytes()


def max_rss_bytes():
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def torch_worker(a):
    """One PyTorch + PEFT measurement in this process; prints one JSON object like vlmsh's."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    import peft
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, name = os.path.split(os.path.abspath(a.model))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    config = peft.LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, target_modules=TARGETS,
                             bias="none", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    batches = synthetic_batches(a.steps + 1, a.batch, a.seq, model.config.vocab_size, a.seed)

    load_peak = peak_rss_bytes()
    reset_peak()
    seconds, losses = [], []
    # --bf16 as the Hugging Face Trainer runs it on a CPU: the forward under bf16 autocast.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast_bf16)
    for step, rows in enumerate(batches):
        ids = torch.tensor(rows, dtype=torch.long)
        t0 = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if step > 0:
            seconds.append(dt)
    median = statistics.median(seconds)
    training_peak = peak_rss_bytes()
    print(json.dumps({
        "model": a.model, "threads": torch.get_num_threads(), "seq": a.seq, "batch": a.batch, "steps": a.steps,
        "lora_r": a.lora_r, "lora_alpha": 2 * a.lora_r, "trainable_parameters": sum(p.numel() for p in params),
        "seed": a.seed, "train_tokens_per_second": a.batch * a.seq / median, "step_seconds": seconds,
        "losses": losses, "peak_rss_bytes": max(load_peak, training_peak, max_rss_bytes()),
        "peak_rss_training_bytes": training_peak,
        "version": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
    }))
    return 0


def run_json(cmd, env, what):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if p.returncode != 0:
        lines = [l.strip() for l in p.stderr.splitlines() if l.strip()] or ["no output"]
        first = next((l for l in reversed(lines) if "error" in l.lower()), lines[-1])
        raise RuntimeError(f"{what} exited {p.returncode}: {first}")
    for line in reversed(p.stdout.splitlines()):
        if line.strip().startswith("{"):
            obj = json.loads(line)
            if "train_tokens_per_second" in obj:
                return obj
    raise RuntimeError(f"{what} printed no JSON object with train_tokens_per_second")


def common_args(a):
    return ["--model", a.model, "--seq", str(a.seq), "--batch", str(a.batch), "--steps", str(a.steps),
            "--lora-r", str(a.lora_r), "--seed", str(a.seed)]


def run_backend(b, a):
    env = dict(os.environ, VLMSH_THREADS=str(a.threads))
    if b.startswith("vlmsh"):
        if not os.path.exists(a.vlmsh):
            raise RuntimeError(f"{a.vlmsh}: not found (build with `swift build -c release`)")
        bf16 = ["--bf16"] if b == "vlmsh-bf16" else []
        return run_json([a.vlmsh, "bench", "--train", *common_args(a), *bf16, "--json"], env, "vlmsh bench --train")
    bf16 = ["--autocast-bf16"] if b == "torch-bf16" else []
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", *common_args(a), "--threads", str(a.threads), *bf16]
    return run_json(cmd, env, "PyTorch worker")


def mib(n):
    return n / 1048576


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vlmsh", default=".build/release/vlmsh", help="vlmsh binary (default: %(default)s)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="GGUF model (default: %(default)s)")
    ap.add_argument("--seq", type=int, default=256, help="tokens per sequence (default: 256)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per step (default: 4)")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per round, after one warm-up step (default: 3)")
    ap.add_argument("--lora-r", type=int, default=8, help="LoRA rank; alpha is twice it (default: 8)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds, one process per backend each (default: 2)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both backends (default: 2)")
    ap.add_argument("--seed", type=int, default=42, help="seed of the synthetic token ids (default: 42)")
    default = [b for b in BACKENDS if not b.endswith("bf16") or has_bf16_instructions()]
    ap.add_argument("--only", default=",".join(default),
                    help="comma list of vlmsh,vlmsh-bf16,torch,torch-bf16 (the bf16 ones where the CPU has AVX512-BF16)")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--autocast-bf16", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.torch_worker:
        return torch_worker(a)

    only = [b.strip() for b in a.only.split(",") if b.strip()]
    bad = [b for b in only if b not in BACKENDS]
    if bad:
        ap.error(f"--only: unknown backend {', '.join(bad)} (choose from {', '.join(BACKENDS)})")
    if not os.path.exists(a.model):
        ap.error(f"{a.model}: model not found")
    if a.seq < 2 or a.batch < 1 or a.steps < 1 or a.rounds < 1 or a.lora_r < 1:
        ap.error("--seq must be ≥ 2; --batch, --steps, --rounds and --lora-r ≥ 1")

    log = (lambda *x: print(*x, file=sys.stderr, flush=True))
    result = {
        "model": os.path.basename(a.model), "seq": a.seq, "batch": a.batch, "steps": a.steps, "lora_r": a.lora_r,
        "lora_alpha": 2 * a.lora_r, "threads": a.threads, "rounds": a.rounds, "seed": a.seed,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
        "backends": {b: {"label": LABELS[b], "available": True, "rounds": []} for b in only},
    }
    # Interleave: round r runs every backend once (each in a fresh process) before round r+1.
    for r in range(a.rounds):
        for b in only:
            row = result["backends"][b]
            if not row["available"]:
                continue
            try:
                obj = run_backend(b, a)
            except Exception as e:
                row.update(available=False, error=str(e).strip().splitlines()[0])
                log(f"[train] {LABELS[b]}: {row['error']}")
                continue
            row["rounds"].append(obj)
            log(f"[train] round {r + 1}/{a.rounds} {LABELS[b]:20} {obj['train_tokens_per_second']:7.1f} tok/s  "
                f"peak RSS {mib(obj['peak_rss_bytes']):6.0f} MiB  loss {obj['losses'][0]:.4f} -> {obj['losses'][-1]:.4f}")

    for b, row in result["backends"].items():
        if row["rounds"]:
            row["train_tokens_per_second"] = statistics.median(x["train_tokens_per_second"] for x in row["rounds"])
            row["peak_rss_bytes"] = max(x["peak_rss_bytes"] for x in row["rounds"])
            row["peak_rss_training_bytes"] = max(x["peak_rss_training_bytes"] for x in row["rounds"])
            row["first_loss"] = row["rounds"][0]["losses"][0]
            row["trainable_parameters"] = row["rounds"][0]["trainable_parameters"]
            if "version" in row["rounds"][0]:
                row["version"] = row["rounds"][0]["version"]
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    v, t = result["backends"].get("vlmsh", {}), result["backends"].get("torch", {})
    h, th = result["backends"].get("vlmsh-bf16", {}), result["backends"].get("torch-bf16", {})
    if "train_tokens_per_second" in v and "train_tokens_per_second" in t:
        result["ratio_vlmsh_over_torch"] = v["train_tokens_per_second"] / t["train_tokens_per_second"]
        result["memory_ratio_vlmsh_over_torch"] = v["peak_rss_bytes"] / t["peak_rss_bytes"]
        # LoRA's B starts at zero, so the first step's loss is the base model's on the same ids.
        result["first_loss_difference"] = abs(v["first_loss"] - t["first_loss"])
    if "train_tokens_per_second" in v and "train_tokens_per_second" in h:
        result["ratio_bf16_over_f32"] = h["train_tokens_per_second"] / v["train_tokens_per_second"]
    if "train_tokens_per_second" in h and "train_tokens_per_second" in th:
        result["ratio_bf16_vlmsh_over_torch"] = h["train_tokens_per_second"] / th["train_tokens_per_second"]

    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['model']}: LoRA r {a.lora_r} (alpha {2 * a.lora_r}) on q/k/v/o/gate/up/down, batch {a.batch} x seq {a.seq}, "
          f"AdamW; {a.threads} threads; median of {a.rounds} rounds x {a.steps} steps")
    print(f"{'backend':22} {'train tok/s':>12} {'peak RSS MiB':>13} {'training peak MiB':>18} {'first loss':>11}")
    for b, row in result["backends"].items():
        if "train_tokens_per_second" in row:
            print(f"{row['label']:22} {row['train_tokens_per_second']:12.1f} {mib(row['peak_rss_bytes']):13.0f} "
                  f"{mib(row['peak_rss_training_bytes']):18.0f} {row['first_loss']:11.4f}")
        else:
            print(f"{row['label']:22} unavailable: {row.get('error', 'no rounds')}")
    if "ratio_vlmsh_over_torch" in result:
        print(f"{'ratio vlmsh/PyTorch':22} {result['ratio_vlmsh_over_torch']:11.2f}x "
              f"{result['memory_ratio_vlmsh_over_torch']:12.2f}x")
    if "ratio_bf16_over_f32" in result:
        print(f"{'ratio --bf16/Float32':22} {result['ratio_bf16_over_f32']:11.2f}x")
    if "ratio_bf16_vlmsh_over_torch" in result:
        print(f"{'ratio bf16 vlmsh/PyTorch':22} {result['ratio_bf16_vlmsh_over_torch']:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
