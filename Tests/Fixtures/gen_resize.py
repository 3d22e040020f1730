"""Resize parity on noise, and LLaVA-NeXT anyres preprocessing and image-token counts.

Noise is where resampling differences show: every output pixel depends on the exact filter
taps, pass order and rounding. The images are not stored: both sides draw them from SplitMix64
(byte i of a w x h image with seed s is the top byte of the (i+1)-th draw from state s, as
VLMTensor's SeededRandom), in (H, W, 3) order.

Layout under data/resize/:
  configs/<cfg>/preprocessor_config.json   save_pretrained output of each processor
  pixels/<case>.u8   small outputs whole: the processor's uint8 output before rescale and
                     normalize, in transformers' layout ([3, H, W], or [N, 3, H, W] for anyres)
  index.json         per case: config, image size and seed, output shape, a checksum of the
                     uint8 output, sampled normalized values; anyres image_sizes; token counts
"""
import ast
import json
import pathlib
import shutil
import types

import numpy as np
from PIL import Image
from transformers.image_processing_utils import select_best_resolution
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
# Outputs up to this many bytes are stored whole; larger ones as checksum + samples.
WHOLE_LIMIT = 12 * 1024
SAMPLES = 32


def _mix(z):
    """SplitMix64's output function on a uint64 array (numpy wraps on overflow)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def noise(width, height, seed):
    n = width * height * 3
    with np.errstate(over="ignore"):
        states = np.uint64(seed) + np.uint64(GOLDEN) * np.arange(1, n + 1, dtype=np.uint64)
        return (_mix(states) >> np.uint64(56)).astype(np.uint8).reshape(height, width, 3)


def checksum(values):
    """sum(byte_i * mix(i + 1)) mod 2^64 over the flattened uint8 output."""
    flat = values.reshape(-1).astype(np.uint64)
    with np.errstate(over="ignore"):
        weights = _mix(np.arange(1, flat.size + 1, dtype=np.uint64))
        return int((flat * weights).sum(dtype=np.uint64))


def _scaled_pinpoints(tile):
    return [[tile * h // 336, tile * w // 336] for h, w in REAL_PINPOINTS]


REAL_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _processors():
    """name -> (class, constructor arguments)."""
    def clip(edge, **kw):
        return CLIPImageProcessorPil, dict(size={"shortest_edge": edge}, crop_size={"height": edge, "width": edge}, **kw)

    def next_(edge):
        return LlavaNextImageProcessorPil, dict(size={"shortest_edge": edge}, crop_size={"height": edge, "width": edge},
                                                image_grid_pinpoints=_scaled_pinpoints(edge))
    return {
        "clip224": clip(224),
        "clip336": clip(336),
        "clip24": clip(24),
        "clip24_bilinear": clip(24, resample=2),
        "siglip224_bilinear": (SiglipImageProcessorPil, dict(size={"height": 224, "width": 224}, resample=2)),
        "siglip384_bilinear": (SiglipImageProcessorPil, dict(size={"height": 384, "width": 384}, resample=2)),
        "siglip20x28": (SiglipImageProcessorPil, dict(size={"height": 20, "width": 28})),
        "next28": next_(28),
        "next56": next_(56),
        "next336": next_(336),
    }


# (width, height): portrait, landscape, extreme, upscaled, around the targets, large.
NOISE_SIZES = [
    (300, 500), (333, 500), (224, 400), (480, 640), (240, 1000), (97, 113),
    (500, 300), (640, 480), (1000, 230), (400, 224), (113, 97),
    (7, 300), (300, 7), (3, 1000), (1000, 3), (1, 1), (2, 5),
    (100, 150), (150, 100), (50, 50), (17, 40), (223, 223),
    (224, 224), (225, 224), (224, 225), (226, 230), (337, 336), (335, 400), (384, 383),
    (1280, 720), (720, 1280), (997, 1531),
]
CONFIG_SIZES = {
    "clip224": NOISE_SIZES,
    "clip336": NOISE_SIZES,
    "clip24": NOISE_SIZES,
    "clip24_bilinear": NOISE_SIZES[:16],
    "siglip224_bilinear": NOISE_SIZES,
    "siglip384_bilinear": NOISE_SIZES[:12] + NOISE_SIZES[-6:],
    "siglip20x28": NOISE_SIZES,
    # 336x336, 800x600, 600x1200, 1000x200 and more, shrunk with the tile for the tiny configs.
    "next28": [(28, 28), (80, 60), (60, 120), (100, 20), (20, 100), (336, 336), (800, 600), (600, 1200), (1000, 200),
               (13, 90), (45, 29), (3, 3)],
    "next56": [(56, 56), (160, 120), (120, 240), (200, 40), (336, 336), (800, 600), (600, 1200), (1000, 200)],
    "next336": [(336, 336), (800, 600), (600, 1200), (1000, 200), (500, 502)],
}

# (height, width) for token counts with the real pinpoints: photos, extremes, tiny and huge.
TOKEN_SIZES = [
    (336, 336), (600, 800), (1200, 600), (200, 1000), (1080, 1920), (1920, 1080), (480, 640), (640, 480),
    (1, 1), (10, 10), (1, 1000), (1000, 1), (336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008),
    (337, 673), (500, 333), (333, 500), (3000, 4000), (4000, 3000), (224, 224), (700, 701), (701, 700),
    (100, 2000), (2000, 100), (999, 1001), (384, 512), (512, 384), (768, 1024), (1024, 768), (250, 250),
    (1500, 400), (400, 1500), (720, 1280), (1280, 720), (2048, 1536), (37, 1234), (1234, 37),
]


def _model_functions():
    """get_anyres_image_grid_shape and unpad_image from modeling_llava_next, run on numpy arrays
    (their bodies only read shapes), so the counts come from transformers' own code without torch."""
    import transformers.models.llava_next as pkg
    source = (pathlib.Path(pkg.__file__).parent / "modeling_llava_next.py").read_text()
    tree = ast.parse(source)
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("get_anyres_image_grid_shape", "unpad_image")]
    namespace = {"np": np, "torch": types.SimpleNamespace(Tensor=np.ndarray), "select_best_resolution": select_best_resolution}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "modeling_llava_next", "exec"), namespace)
    return namespace["get_anyres_image_grid_shape"], namespace["unpad_image"]


def _model_feature_count(image_size, pinpoints, tile, patch, grid_shape, unpad):
    """Rows pack_image_features produces: base tile (CLS dropped) + unpadded grid + one newline per row."""
    side = tile // patch
    rows, cols = grid_shape(list(image_size), pinpoints, tile)
    grid = np.zeros((1, rows * side, cols * side))
    unpadded = unpad(grid, list(image_size))
    return side * side + unpadded.shape[1] * (unpadded.shape[2] + 1)


def _processor_token_count(image_size, pinpoints, tile, patch):
    """LlavaNextProcessor's placeholder count, llava-hf settings: CLS counted then dropped ("default")."""
    fake = types.SimpleNamespace(image_processor=types.SimpleNamespace(image_grid_pinpoints=pinpoints),
                                 patch_size=patch, num_additional_image_tokens=1)
    fake._get_unpadded_features = types.MethodType(LlavaNextProcessor._get_unpadded_features, fake)
    return LlavaNextProcessor._get_number_of_features(fake, image_size[0], image_size[1], tile, tile) - 1


def generate(out_dir):
    shutil.rmtree(out_dir, ignore_errors=True)
    configs, pixels = out_dir / "configs", out_dir / "pixels"
    for d in (configs, pixels):
        d.mkdir(parents=True)
    (out_dir / ".gitattributes").write_text("# Raw uint8 pixel arrays: never diffed or merged as text.\n*.u8 binary\n")
    index = {"configs": {}, "cases": [], "tokens": []}
    pick = np.random.default_rng(7)
    for cfg, (cls, kwargs) in _processors().items():
        proc = cls(**kwargs)
        proc.save_pretrained(configs / cfg)
        # The same processor stopped before rescale and normalize: its uint8 pixels.
        raw = cls(**kwargs, do_rescale=False, do_normalize=False)
        anyres = cls is LlavaNextImageProcessorPil
        index["configs"][cfg] = {"folder": f"configs/{cfg}", "anyres": anyres}
        for n, (w, h) in enumerate(CONFIG_SIZES[cfg]):
            seed = 1000 * len(index["cases"]) + 17 * w + h
            image = Image.fromarray(noise(w, h, seed))
            out = raw(image, return_tensors="np")
            values = out["pixel_values"][0]
            assert np.array_equal(values, np.round(values)) and values.min() >= 0 and values.max() <= 255
            values = values.astype(np.uint8)
            normalized = proc(image, return_tensors="np")["pixel_values"][0].astype(np.float32)
            assert normalized.shape == values.shape
            name = f"{cfg}-{w}x{h}"
            case = {"name": name, "config": cfg, "width": w, "height": h, "seed": seed,
                    "shape": list(values.shape), "checksum": f"{checksum(values):016x}"}
            if values.size <= WHOLE_LIMIT:
                (pixels / f"{name}.u8").write_bytes(values.tobytes())
                case["pixels"] = f"pixels/{name}.u8"
            where = np.sort(pick.choice(values.size, size=min(SAMPLES, values.size), replace=False))
            # Shortest decimal that reads back as the same float32.
            shortest = [float(np.format_float_positional(x, unique=True)) for x in normalized.reshape(-1)[where]]
            case["samples"] = {"index": where.tolist(), "uint8": values.reshape(-1)[where].tolist(), "normalized": shortest}
            if anyres:
                case["image_size"] = [int(x) for x in out["image_sizes"][0]]
                case["best_resolution"] = list(select_best_resolution((h, w), proc.image_grid_pinpoints))
            index["cases"].append(case)

    grid_shape, unpad = _model_functions()
    for tile, patch in ((336, 14), (28, 7), (56, 14)):
        pinpoints = REAL_PINPOINTS if tile == 336 else _scaled_pinpoints(tile)
        for size in TOKEN_SIZES:
            model = _model_feature_count(size, pinpoints, tile, patch, grid_shape, unpad)
            processor = _processor_token_count(size, pinpoints, tile, patch)
            assert model == processor, (tile, size, model, processor)
            index["tokens"].append({"tile": tile, "patch": patch, "pinpoints": pinpoints, "height": size[0],
                                    "width": size[1], "grid": list(grid_shape(list(size), pinpoints, tile)),
                                    "count": model})
    # One case or count per line: the file stays small and diffs stay readable.
    def rows(items):
        return ",\n".join("  " + json.dumps(item, sort_keys=True) for item in items)
    (out_dir / "index.json").write_text(
        "{\n \"configs\": " + json.dumps(index["configs"], sort_keys=True) + ",\n \"cases\": [\n"
        + rows(index["cases"]) + "\n ],\n \"tokens\": [\n" + rows(index["tokens"]) + "\n ]\n}\n")
