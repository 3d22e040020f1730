#!/usr/bin/env python3
"""Image encode time of a CLIP vision tower (default: ViT-L/14-336, as LLaVA-1.5) with random
weights: vlmsh (Float32, and --bf16 where the CPU has AVX512-BF16) beside PyTorch fp32 on the
same thread count, interleaved rounds, one run.

Both run the tower up to hidden state -2 (LLaVA's feature layer) for one image.
"""
import argparse
import json
import statistics
import subprocess
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

DEFAULT_CONFIG = "Tests/Fixtures/data/vision/clip-vit-large-patch14-336.json"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vlmsh", default=".build/release/vlmsh")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    config = CLIPVisionConfig(**{k: v for k, v in json.load(open(a.config)).items() if k != "model_type"})
    model = CLIPVisionModel(config).eval()
    pixels = torch.randn(1, 3, config.image_size, config.image_size)
    with torch.no_grad():
        model(pixels, output_hidden_states=True)  # warm-up

    bf16 = "avx512_bf16" in open("/proc/cpuinfo").read()
    ours, halves, theirs = [], [], []

    def encode(extra):
        out = subprocess.run([a.vlmsh, "bench", "--vision", a.config, "--rounds", "1", "--json", *extra],
                             capture_output=True, text=True, env={"VLMSH_THREADS": str(a.threads), "PATH": "/usr/bin:/bin"})
        if out.returncode != 0:
            raise SystemExit(f"vlmsh bench --vision failed: {out.stderr.strip()}")
        return json.loads(out.stdout)["image_encode_seconds"]

    for _ in range(a.rounds):
        ours.append(encode([]))
        if bf16:
            halves.append(encode(["--bf16"]))
        with torch.no_grad():
            t0 = time.perf_counter()
            model(pixels, output_hidden_states=True).hidden_states[-2]
            theirs.append(time.perf_counter() - t0)
    v, t = statistics.median(ours), statistics.median(theirs)
    print(f"image encode, CLIP {config.image_size}px/{config.patch_size} ({config.num_hidden_layers} layers), "
          f"{a.threads} threads, median of {a.rounds}")
    print(f"vlmsh              {v:8.3f} s")
    if halves:
        print(f"vlmsh --bf16       {statistics.median(halves):8.3f} s")
    print(f"transformers fp32  {t:8.3f} s")
    print(f"ratio (torch time / vlmsh time) {t / v:.2f}x")
    if halves:
        print(f"ratio (vlmsh time / vlmsh --bf16 time) {v / statistics.median(halves):.2f}x")


if __name__ == "__main__":
    main()
