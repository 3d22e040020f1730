#!/usr/bin/env python3
"""`make bench`: vlmsh against llama.cpp (llama-cpp-python) and transformers fp32, same GGUF, same
thread count, interleaved rounds in one run so machine noise hits every backend alike.

Each round measures prefill (one forward over --prefill token ids) and decode (--decode greedy
single-token steps). The table shows the median over rounds; --json prints everything.
See bench/README.md.
"""
import argparse
import inspect
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback

DEFAULT_MODEL = os.path.expanduser("~/.vlmsh/models/SmolLM2-135M-Instruct.Q4_1.gguf")
BACKENDS = ["vlmsh", "vlmsh-int8", "llamacpp", "torch"]
LABELS = {"vlmsh": "vlmsh", "vlmsh-int8": "vlmsh int8", "llamacpp": "llama.cpp", "torch": "transformers fp32"}


class Unavailable(Exception):
    """A backend that cannot run here; its row is reported, the others still run."""


def prompt_ids(model, n, seed):
    """n ids drawn with a fixed seed from the GGUF's normal tokens (no specials, control or byte
    tokens), so llama.cpp and transformers see exactly the same input."""
    from gguf import GGUFReader

    field = GGUFReader(model).fields.get("tokenizer.ggml.token_type")
    if field is None:
        raise Unavailable(f"{model}: no tokenizer.ggml.token_type")
    types = [int(field.parts[i][0]) for i in field.data]
    normal = [i for i, t in enumerate(types) if t == 1]
    rng = random.Random(seed)
    return [rng.choice(normal) for _ in range(n)]


class Vlmsh:
    """Runs `vlmsh bench` as a subprocess each round; it reports its own rates as JSON. `activations`
    int8 is `--activations int8` (8-bit activations and integer dot products, as llama.cpp)."""

    def __init__(self, a, activations="f32"):
        self.cmd = [a.vlmsh, "bench", "--model", a.model, "--prefill", str(a.prefill),
                    "--decode", str(a.decode), "--activations", activations, "--json"]
        self.env = dict(os.environ, VLMSH_THREADS=str(a.threads))
        if not os.path.exists(a.vlmsh):
            raise Unavailable(f"{a.vlmsh}: not found (build with `swift build -c release`)")

    def version(self):
        try:
            out = subprocess.run([self.cmd[0], "--version"], capture_output=True, text=True, timeout=30)
            return out.stdout.strip() or None
        except Exception:
            return None

    def run(self):
        p = subprocess.run(self.cmd, capture_output=True, text=True, env=self.env, timeout=1800)
        if p.returncode != 0:
            lines = [l.strip() for l in p.stderr.splitlines() if l.strip()] or ["no output"]
            first = next((l for l in lines if "error" in l.lower()), lines[0])
            raise Unavailable(f"vlmsh bench exited {p.returncode}: {first}")
        obj = None
        try:
            obj = json.loads(p.stdout)
        except json.JSONDecodeError:
            # Tolerate log lines before the JSON object.
            for line in reversed(p.stdout.splitlines()):
                if line.strip().startswith("{"):
                    obj = json.loads(line)
                    break
        if not isinstance(obj, dict) or "prefill_tokens_per_second" not in obj:
            raise Unavailable("vlmsh bench printed no JSON object with prefill_tokens_per_second")
        return float(obj["prefill_tokens_per_second"]), float(obj["decode_tokens_per_second"])


class LlamaCpp:
    def __init__(self, a, ids):
        try:
            import llama_cpp
            import numpy as np
        except ImportError as e:
            raise Unavailable(f"llama-cpp-python not installed ({e})")
        self.np = np
        self.lib_version = llama_cpp.__version__
        self.llm = llama_cpp.Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads,
                                   n_ctx=512 if len(ids) + a.decode <= 512 else 1024, n_batch=512, verbose=False)
        self.ids, self.decode = ids, a.decode
        self._pass(ids[:16], 4)  # warm-up: first calls allocate buffers

    def version(self):
        return self.lib_version

    def _last_logits(self):
        # llama.cpp's own buffer: Llama.scores keeps only n_batch rows when logits_all is off.
        import llama_cpp
        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return self.np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),))

    def _pass(self, ids, steps):
        llm = self.llm
        llm.reset()  # fresh KV cache: every round prefills from position 0
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        for _ in range(steps):
            nxt = int(self.np.argmax(self._last_logits()))
            llm.eval([nxt])
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    def run(self):
        pre, dec = self._pass(self.ids, self.decode)
        return len(self.ids) / pre, self.decode / dec


class Torch:
    def __init__(self, a, ids):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM
        except ImportError as e:
            raise Unavailable(f"torch/transformers not installed ({e})")
        transformers.logging.set_verbosity_error()
        self.torch, self.tf_version = torch, transformers.__version__
        torch.set_num_threads(a.threads)
        d, name = os.path.split(os.path.abspath(a.model))
        self.model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
        self.ids, self.decode = torch.tensor([ids]), a.decode
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self._pass(self.ids[:, :16], 4)  # warm-up

    def version(self):
        return f"torch {self.torch.__version__}, transformers {self.tf_version}"

    def _pass(self, ids, steps):
        torch, model = self.torch, self.model
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            t1 = time.perf_counter()
            # The KV cache is returned as `cache` in transformers >= 5.x, `past_key_values` before.
            cache = getattr(out, "cache", None) or out.past_key_values
            for _ in range(steps):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                out = model(nxt, **{self.cache_arg: cache}, use_cache=True)
                cache = getattr(out, "cache", None) or out.past_key_values
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    def run(self):
        pre, dec = self._pass(self.ids, self.decode)
        return self.ids.shape[1] / pre, self.decode / dec


class Worker:
    """Runs an in-process engine (llama.cpp, torch) in its own process, loaded once. Keeping each
    engine's thread pool in a separate process stops one engine's idle spinning threads (OpenMP
    spin-waits after every operator) from stealing cores while another engine is measured."""

    def __init__(self, kind, a, ids):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, kind, a, ids), daemon=True)
        self.proc.start()
        child.close()
        self.ver = self._reply()

    def _reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise Unavailable(f"worker process died (exit code {self.proc.join(5) or self.proc.exitcode})")
        if status == "error":
            raise Unavailable(value)
        return value

    def version(self):
        return self.ver

    def run(self):
        self.conn.send("run")
        return self._reply()

    def close(self):
        try:
            self.conn.send("stop")
        except OSError:
            pass
        self.proc.join(30)


def _serve(conn, kind, a, ids):
    try:
        engine = LlamaCpp(a, ids) if kind == "llamacpp" else Torch(a, ids)
        conn.send(("ok", engine.version()))
    except Exception as e:
        conn.send(("error", one_line(e)))
        return
    while conn.recv() == "run":
        try:
            conn.send(("ok", engine.run()))
        except Exception as e:
            conn.send(("error", one_line(e)))


def one_line(e):
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}" if not isinstance(e, Unavailable) else (s[0] if s else "unavailable")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vlmsh", default=".build/release/vlmsh", help="vlmsh binary (default: %(default)s)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="GGUF model (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default: 3)")
    ap.add_argument("--prefill", type=int, default=256, help="prompt tokens (default: 256)")
    ap.add_argument("--decode", type=int, default=128, help="generated tokens (default: 128)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every backend (default: 2)")
    ap.add_argument("--seed", type=int, default=1234, help="seed for the prompt token ids")
    ap.add_argument("--only", default=",".join(BACKENDS), help="comma list of vlmsh,llamacpp,torch")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    a = ap.parse_args(argv)

    only = [b.strip() for b in a.only.split(",") if b.strip()]
    bad = [b for b in only if b not in BACKENDS]
    if bad:
        ap.error(f"--only: unknown backend {', '.join(bad)} (choose from {', '.join(BACKENDS)})")
    if a.prefill > 512:
        ap.error("--prefill: at most 512 tokens (llama.cpp's batch)")
    if not os.path.exists(a.model):
        ap.error(f"{a.model}: model not found")

    log = (lambda *x: print(*x, file=sys.stderr, flush=True))
    result = {
        "model": os.path.basename(a.model), "prefill_tokens": a.prefill, "decode_tokens": a.decode,
        "threads": a.threads, "rounds": a.rounds, "seed": a.seed,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": list(os.getloadavg())},
        "backends": {},
    }
    runners = {}
    ids = None
    for b in only:
        row = result["backends"][b] = {"label": LABELS[b], "available": True, "rounds": []}
        try:
            if not b.startswith("vlmsh") and ids is None:
                ids = prompt_ids(a.model, a.prefill, a.seed)
            log(f"[bench] loading {LABELS[b]}")
            runners[b] = (Vlmsh(a) if b == "vlmsh" else Vlmsh(a, "int8") if b == "vlmsh-int8"
                          else Worker(b, a, ids))
            row["version"] = runners[b].version()
        except Exception as e:
            row.update(available=False, error=one_line(e))
            if not isinstance(e, Unavailable):
                traceback.print_exc(file=sys.stderr)

    # Interleave: round r runs every backend once before round r+1 starts.
    for r in range(a.rounds):
        for b, runner in list(runners.items()):
            row = result["backends"][b]
            try:
                pre, dec = runner.run()
                row["rounds"].append({"prefill_tokens_per_second": pre, "decode_tokens_per_second": dec})
                log(f"[bench] round {r + 1}/{a.rounds} {LABELS[b]:18} prefill {pre:8.1f} tok/s  decode {dec:7.1f} tok/s")
            except Exception as e:
                row.update(available=False, error=one_line(e))
                del runners[b]
                log(f"[bench] {LABELS[b]}: {row['error']}")

    for runner in runners.values():
        if isinstance(runner, Worker):
            runner.close()

    for b, row in result["backends"].items():
        if row["available"] and row["rounds"]:
            for k in ["prefill_tokens_per_second", "decode_tokens_per_second"]:
                row[k] = statistics.median(x[k] for x in row["rounds"])
    result["machine"]["loadavg_end"] = list(os.getloadavg())

    ratios = {}
    for mine in ["vlmsh", "vlmsh-int8"]:
        v = result["backends"].get(mine, {})
        for other in ["llamacpp", "torch"]:
            o = result["backends"].get(other, {})
            if "prefill_tokens_per_second" in v and "prefill_tokens_per_second" in o:
                ratios[f"{mine}/{other}"] = {
                    "prefill": v["prefill_tokens_per_second"] / o["prefill_tokens_per_second"],
                    "decode": v["decode_tokens_per_second"] / o["decode_tokens_per_second"],
                }
    result["ratios"] = ratios

    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['model']}: prefill {a.prefill} tokens, decode {a.decode} tokens, "
          f"{a.threads} threads, median of {a.rounds} rounds")
    print(f"{'backend':30} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for b, row in result["backends"].items():
        if "prefill_tokens_per_second" in row:
            print(f"{row['label']:30} {row['prefill_tokens_per_second']:14.1f} {row['decode_tokens_per_second']:13.1f}")
        else:
            print(f"{row['label']:30} {'unavailable: ' + row.get('error', 'no rounds')}")
    for name, r in ratios.items():
        label = "ratio " + name.replace("llamacpp", "llama.cpp").replace("torch", "transformers").replace("-int8", " int8")
        print(f"{label:30} {r['prefill']:13.2f}x {r['decode']:12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
