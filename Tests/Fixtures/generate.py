#!/usr/bin/env python3
"""Regenerates the golden fixtures the Swift tests compare against (`make fixtures`).

Each gen_*.py module owns one area and writes under data/<area>/. Run with the reference venv
(torch, transformers, peft, gguf, pillow, safetensors, tokenizers); CI never runs this.
Usage: generate.py [area ...]   (default: every area)
"""
import importlib
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE / "data"
AREAS = ["quant", "safetensors", "tokenizers", "smollm", "tinyllama", "images", "resize", "vision", "llava", "llava_next", "train",
         "torch_bin", "adam8bit", "import_run", "gguf_pair", "gguf_pair_next",
         "export_run", "export_gguf"]
GENERATOR_VERSION = 1


def versions():
    out = {"generator": GENERATOR_VERSION, "python": sys.version.split()[0]}
    for name in ["torch", "transformers", "peft", "gguf", "PIL", "safetensors", "tokenizers", "numpy", "bitsandbytes"]:
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:
            pass
    return out


def main():
    sys.path.insert(0, str(HERE))
    areas = sys.argv[1:] or AREAS
    for area in areas:
        out = DATA / area
        out.mkdir(parents=True, exist_ok=True)
        print(f"[fixtures] {area}", flush=True)
        importlib.import_module(f"gen_{area}").generate(out)
        (out / "VERSION.json").write_text(json.dumps(versions(), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
