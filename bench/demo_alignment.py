#!/usr/bin/env python3
"""How well a demo model's image tokens name what each cell of a picture holds.

The demo's stage 1 (sessions/build-demo.vlm) trains the tower and projector to put each image
token (one per patch of a grid x grid split of the picture) on the sum of SmolLM2's input
embeddings of what the patch holds: the shape whose centre lies in it (" small" + " red" +
" star"), or " nothing".
This reads a model folder's tower and projector with transformers, runs them on pictures whose
contents are known (sessions/data/foreign/pictures.json: the foreign renderer's; or make-demo-data records, whose
image_token_texts name each patch's contents), and reports how
often the nearest such word sum to each token has the right colour, shape and emptiness.

  python bench/demo_alignment.py MODEL_DIR [PICTURES_JSON] [--vlmsh .build/release/vlmsh]
"""
import argparse
import json
import pathlib
import subprocess

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
KINDS = ["circle", "square", "triangle", "star", "cross", "heart", "diamond"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def token_ids(vlmsh, text):
    out = subprocess.run([vlmsh, "tokenize", "--model", "smollm2", "--text", text, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["ids"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("pictures", nargs="?", default=str(ROOT / "sessions/data/foreign/pictures.json"))
    ap.add_argument("--vlmsh", default=str(ROOT / ".build/release/vlmsh"))
    ap.add_argument("--limit", type=int, default=None, help="only the first pictures")
    ap.add_argument("--gguf", default=str(pathlib.Path.home() / ".vlmsh/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()

    config = json.loads((pathlib.Path(args.model) / "config.json").read_text())
    vision = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in config["vision_config"].items() if k != "model_type"}))
    weights = load_file(str(pathlib.Path(args.model) / "model.safetensors"))
    prefix = "vision_tower.vision_model."
    vision.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True)
    w1, b1 = weights["multi_modal_projector.linear_1.weight"], weights["multi_modal_projector.linear_1.bias"]
    w2, b2 = weights["multi_modal_projector.linear_2.weight"], weights["multi_modal_projector.linear_2.bias"]
    processor = CLIPImageProcessor.from_pretrained(args.model)
    layer = config.get("vision_feature_layer", -2)
    grid = config["vision_config"]["image_size"] // config["vision_config"]["patch_size"]
    # A tower whose class token is kept ("full") puts the number of shapes there.
    class_token = config.get("vision_feature_select_strategy", "default") == "full"

    reader = GGUFReader(args.gguf)
    table = next(t for t in reader.tensors if t.name == "token_embd.weight")
    embeddings = dequantize(table.data, table.tensor_type).reshape(-1, int(table.shape[0]))

    def word_sum(words):
        return sum(embeddings[token_ids(args.vlmsh, " " + w)[0]] for w in words.split())

    labels = [(s, c, k) for s in ["small", "large"] for c in COLOURS for k in KINDS] + [None]
    sums = np.stack([word_sum(" ".join(l)) if l else word_sum("nothing") for l in labels])
    numbers = ["one", "two", "three", "four"]
    number_sums = np.stack([word_sum(n) for n in numbers])
    counts = [0, 0]

    pictures = json.loads(pathlib.Path(args.pictures).read_text())[: args.limit]
    folder = pathlib.Path(args.pictures).parent
    tally = {"object tokens": 0, "colour": 0, "shape": 0, "both": 0, "empty tokens": 0, "empty right": 0}
    # Shape-kind hits by the shape's radius as a share of the picture's side (pictures.json only).
    by_radius = {"< 0.12": [0, 0], "0.12-0.18": [0, 0], ">= 0.18": [0, 0]}
    with torch.no_grad():
        for p in pictures:
            pixels = processor(images=Image.open(folder / p["image"]).convert("RGB"), return_tensors="pt")["pixel_values"]
            hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][0, 1:]
            if class_token:
                hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][0]
            tokens = (torch.nn.functional.gelu(hidden @ w1.T + b1) @ w2.T + b2).numpy()
            if class_token:
                guess = ((tokens[0][None] - number_sums) ** 2).sum(-1).argmin()
                counts[0] += numbers[guess] == (numbers[len(p["shapes"]) - 1] if "shapes" in p else p["image_token_texts"][0])
                counts[1] += 1
                tokens = tokens[1:]
            nearest = [labels[i] for i in ((tokens[:, None, :] - sums[None]) ** 2).sum(-1).argmin(1)]
            cells = {}
            if "image_token_texts" in p:
                # make-demo-data records name each patch's contents: "small red star" or "nothing".
                texts = p["image_token_texts"][1:] if class_token else p["image_token_texts"]
                assert len(texts) == grid * grid, "the records were made for another token grid"
                for index, text in enumerate(texts):
                    if text != "nothing":
                        _, colour, kind = text.split()
                        cells[divmod(index, grid)] = {"colour": colour, "kind": kind}
            near = set()
            for s in p.get("shapes", []):
                cells[(min(int(grid * s["y"] / p["side"]), grid - 1), min(int(grid * s["x"] / p["side"]), grid - 1))] = s
                # Patches whose centre lies within the shape's radius may be labelled with it too.
                for r in range(grid):
                    for c in range(grid):
                        if ((c + 0.5) * p["side"] / grid - s["x"]) ** 2 + ((r + 0.5) * p["side"] / grid - s["y"]) ** 2 < s["radius"] ** 2:
                            near.add((r, c))
            for index, label in enumerate(nearest):
                shape = cells.get(divmod(index, grid))
                if shape is None and divmod(index, grid) in near:
                    continue
                if shape is None:
                    tally["empty tokens"] += 1
                    tally["empty right"] += label is None
                    continue
                tally["object tokens"] += 1
                colour = label is not None and label[1] == shape["colour"]
                kind = label is not None and label[2] == shape["kind"]
                tally["colour"] += colour
                tally["shape"] += kind
                tally["both"] += colour and kind
                if "radius" in shape:
                    r = shape["radius"] / p["side"]
                    bucket = by_radius["< 0.12" if r < 0.12 else "0.12-0.18" if r < 0.18 else ">= 0.18"]
                    bucket[0] += kind
                    bucket[1] += 1
    n, e = tally["object tokens"], tally["empty tokens"]
    print(f"{args.model} on {len(pictures)} pictures: {n} tokens hold a shape's centre, {e} are empty")
    print(f"  nearest word sum has the shape's colour {tally['colour'] / n:.1%}, its kind {tally['shape'] / n:.1%}, "
          f"both {tally['both'] / n:.1%}; empty patches read as nothing {tally['empty right'] / e:.1%}")
    if counts[1]:
        print(f"  the class token's nearest number word is the number of shapes {counts[0] / counts[1]:.1%}")
    if any(total for _, total in by_radius.values()):
        print("  its kind by radius/side: " + ", ".join(f"{k} {hit / total:.1%} of {total}" for k, (hit, total) in by_radius.items() if total))


if __name__ == "__main__":
    main()
