#!/usr/bin/env python3
"""Loads a LoRA adapter onto a LLaVA base with PEFT and prints the last-position logits of one example.

Usage: check_peft_load.py [--strict-names] BASE_DIR ADAPTER_DIR IDS_JSON

BASE_DIR     a folder LlavaForConditionalGeneration.from_pretrained reads (e.g. data/llava/clip-llama)
ADAPTER_DIR  a PEFT adapter folder (adapter_config.json + adapter_model.safetensors), e.g. data/train/lora-init
             or one vlmsh wrote
IDS_JSON     {"input_ids": [int], "pixel_values": <see below> | null}
             input_ids as the model sees them (the image token repeated once per image feature); if the image
             token occurs exactly once and pixel values are given it is expanded to config.image_seq_length.
             pixel_values: {"file": "<x>.safetensors" (relative to the JSON's folder), "key": "<tensor name>"}
             or a nested list [n, 3, H, W].

Prints one JSON line: {"adapter": ADAPTER_DIR, "adapter_keys": n, "canonical_key_names": bool, "input_length": T,
"last_logits": [vocab floats]}; canonical_key_names: the file's keys are exactly the ones PEFT's save_pretrained
writes for this model (PEFT also accepts some other layouts, e.g. transformers 4.x LLaVA names, and renames them).
Exits non-zero if PEFT reports missing or unexpected adapter keys, if a loaded LoRA weight is not the file's, or,
with --strict-names, if the key names are not canonical.
"""
import json
import os
import pathlib
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlavaForConditionalGeneration  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402


def fail(message):
    raise SystemExit(f"check_peft_load: {message}")


def read_pixel_values(spec, folder):
    if spec is None:
        return None
    if isinstance(spec, dict):
        return load_file(str(folder / spec["file"]))[spec["key"]].to(torch.float32)
    return torch.tensor(spec, dtype=torch.float32)


def main(argv):
    strict = "--strict-names" in argv
    argv = [a for a in argv if a != "--strict-names"]
    if len(argv) != 4:
        fail("usage: check_peft_load.py [--strict-names] BASE_DIR ADAPTER_DIR IDS_JSON")
    base_dir, adapter_dir, ids_path = argv[1], argv[2], pathlib.Path(argv[3])
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    spec = json.loads(ids_path.read_text())
    base = LlavaForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32).eval()
    cfg = base.config

    # PeftModel.from_pretrained only warns about missing adapter keys: make any such warning fatal.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
    for w in caught:
        text = str(w.message)
        if "missing adapter keys" in text.lower() or "unexpected" in text.lower():
            fail(f"PEFT: {text}")

    # Load the same weights again through PEFT's state-dict loader to see its unexpected keys too.
    weights = load_peft_weights(adapter_dir, device="cpu")
    result = set_peft_model_state_dict(model, weights, adapter_name="default")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        fail(f"PEFT reports missing adapter keys: {missing}")
    if result.unexpected_keys:
        fail(f"PEFT reports unexpected adapter keys: {list(result.unexpected_keys)}")

    # Every LoRA weight PEFT now holds must come from the file unchanged. PEFT renames some layouts on load (with
    # transformers 5 it maps the 4.x LLaVA names base_model.model.language_model.model.layers.* to
    # base_model.model.model.language_model.layers.*), so values are matched by name first, else by content.
    expected = get_peft_model_state_dict(model, adapter_name="default")
    if len(expected) != len(weights):
        fail(f"the adapter has {len(weights)} tensors, PEFT holds {len(expected)} for this model")
    file_values = [w.to(torch.float32) for w in weights.values()]
    for k, v in expected.items():
        v = v.to(torch.float32)
        if k in weights:
            ok = weights[k].shape == v.shape and torch.equal(weights[k].to(torch.float32), v)
        else:
            ok = any(w.shape == v.shape and torch.equal(w, v) for w in file_values)
        if not ok:
            fail(f"{k}: the loaded value is not the file's")
    canonical = sorted(expected) == sorted(weights)
    if strict and not canonical:
        fail(f"key names differ from the ones PEFT writes: {sorted(set(weights) - set(expected))[:4]} ...")

    pixel_values = read_pixel_values(spec.get("pixel_values"), ids_path.parent)
    ids = list(spec["input_ids"])
    image_id = cfg.image_token_index
    if pixel_values is not None and ids.count(image_id) == 1:
        at = ids.index(image_id)
        ids = ids[:at] + [image_id] * cfg.image_seq_length + ids[at + 1:]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values,
                       attention_mask=torch.ones_like(input_ids)).logits[0, -1]
    print(json.dumps({"adapter": str(adapter_dir), "adapter_keys": len(weights), "canonical_key_names": canonical,
                      "input_length": len(ids),
                      "last_logits": logits.tolist()}))


if __name__ == "__main__":
    main(sys.argv)
