"""Image fixtures: small synthetic JPEG/PNG files, PIL's decoded RGB, and pixel_values from
transformers' PIL-backend image processors (CLIP, SigLIP, LLaVA pad-to-square).

Layout under data/images/:
  files/<name>.<ext>        the encoded images
  decoded/<name>.rgb        (all but "large") ImageOps.exif_transpose(Image.open(f)).convert("RGB") as raw bytes
  configs/<cfg>/preprocessor_config.json   save_pretrained output of each processor
  pixel_values.safetensors  "<cfg>/<image>" -> [3, H, W] (F32; F16 for the 336 config)
  index.json                images (size, orientation) and configs (pad flag, image list)
"""
import io
import json
import shutil
import struct
import zlib

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil


def _pattern(w, h, seed):
    """Gradients, a disc and noise: edges and texture so resampling differences show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 255 * (((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(w, h) / 3) ** 2)
    img = np.stack([r, g, b], -1) + rng.normal(0, 24, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _raw_png(w, h, color_type, depth, samples):
    """A PNG written by hand (PIL cannot write 16-bit colour): `samples` is [h, w, c] big-endian-ready."""
    dtype = ">u2" if depth == 16 else "u1"
    rows = b"".join(b"\x00" + samples[i].astype(dtype).tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def _with_gamma(png_bytes, gamma):
    """Inserts a gAMA chunk after IHDR; PIL ignores it, so the decoder must too."""
    head = 8 + 25
    return png_bytes[:head] + _chunk(b"gAMA", struct.pack(">I", gamma)) + png_bytes[head:]


def _images(files):
    """Writes every test image; returns {name: filename}."""
    out = {}

    def save(name, ext, im=None, data=None, **kw):
        path = files / f"{name}.{ext}"
        if data is not None:
            path.write_bytes(data)
        else:
            im.save(path, **kw)
        out[name] = path.name

    save("square", "png", Image.fromarray(_pattern(64, 64, 1)))
    save("wide", "jpg", Image.fromarray(_pattern(96, 40, 2)), quality=90, subsampling=0)
    save("tall", "png", Image.fromarray(_pattern(40, 96, 3)))
    save("gray", "png", Image.fromarray(_pattern(50, 37, 4)[..., 0]))
    save("gray_jpeg", "jpg", Image.fromarray(_pattern(50, 37, 5)[..., 1]), quality=85)
    pal = Image.fromarray(_pattern(45, 33, 6)).quantize(colors=37)
    save("palette", "png", pal, transparency=3)
    rgba = np.concatenate([_pattern(30, 50, 7), _pattern(30, 50, 8)[..., :1]], -1)
    save("rgba", "png", Image.fromarray(rgba, "RGBA"))
    save("bilevel", "png", Image.fromarray(_pattern(33, 21, 9)[..., 0] > 128))
    rgb16 = _pattern(20, 12, 10).astype(np.uint16) * 257 + np.random.default_rng(11).integers(0, 257, (12, 20, 3)).astype(np.uint16)
    save("rgb16", "png", data=_raw_png(20, 12, 2, 16, rgb16))
    opaque16 = np.concatenate([rgb16, np.full((12, 20, 1), 65535, np.uint16)], -1)
    save("rgba16_opaque", "png", data=_raw_png(20, 12, 6, 16, opaque16))
    gray16 = (np.arange(18 * 10, dtype=np.uint16).reshape(10, 18) * 3)  # 0..537: below and above 255
    save("gray16", "png", data=_raw_png(18, 10, 0, 16, gray16))
    plain = io.BytesIO()
    Image.fromarray(_pattern(26, 19, 12)).save(plain, "PNG")
    save("gamma", "png", data=_with_gamma(plain.getvalue(), 100000))  # gamma 1.0
    save("baseline", "jpg", Image.fromarray(_pattern(80, 60, 13)), quality=88)
    save("progressive", "jpg", Image.fromarray(_pattern(80, 60, 14)), quality=88, progressive=True)
    cmyk = np.concatenate([_pattern(40, 30, 15), _pattern(40, 30, 16)[..., :1] // 2], -1)
    save("cmyk", "jpg", Image.fromarray(cmyk, "CMYK"), quality=90)
    for orientation in (6, 3, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"exif{orientation}", "jpg", Image.fromarray(_pattern(48, 32, 20 + orientation)), quality=90, exif=exif.tobytes())
    save("tiny", "png", Image.fromarray(np.array([[[200, 30, 90]]], np.uint8)))
    save("tiny_jpeg", "jpg", Image.fromarray(np.array([[[20, 230, 90]]], np.uint8)), quality=95)
    save("large", "jpg", Image.fromarray(_pattern(400, 300, 30)), quality=85)
    return out


def _processors():
    """name -> (processor, pad_to_square, image subset or None for all small images)."""
    clip = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return {
        "clip32": (CLIPImageProcessorPil(**clip), False, None),
        "clip32_bilinear": (CLIPImageProcessorPil(resample=2, **clip), False,
                            ["square", "wide", "tall", "gray_jpeg", "progressive", "exif3"]),
        "clip_upscale": (CLIPImageProcessorPil(size={"shortest_edge": 60}, crop_size={"height": 40, "width": 52}),
                         False, ["tiny", "gray", "wide", "square", "exif6"]),
        "clip_crop_pads": (CLIPImageProcessorPil(size={"shortest_edge": 20}, crop_size={"height": 24, "width": 18}),
                           False, ["wide", "tall", "tiny"]),
        "siglip24": (SiglipImageProcessorPil(size={"height": 24, "width": 24}), False, None),
        "siglip24_bilinear": (SiglipImageProcessorPil(size={"height": 24, "width": 28}, resample=2), False,
                              ["square", "wide", "tall", "cmyk"]),
        "llava_pad32": (LlavaImageProcessorPil(do_pad=True, **clip), True,
                        ["wide", "tall", "palette", "gray", "exif6", "tiny", "rgba", "cmyk", "square"]),
        "clip336": (CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
                    False, ["large"]),
    }


def _expand2square(img, background):
    """LLaVA's original expand2square, to check transformers' pad agrees with it."""
    w, h = img.size
    if w == h:
        return img
    s = max(w, h)
    out = Image.new(img.mode, (s, s), background)
    out.paste(img, ((s - w) // 2, (s - h) // 2))
    return out


def generate(out_dir):
    shutil.rmtree(out_dir, ignore_errors=True)
    files, decoded, configs = out_dir / "files", out_dir / "decoded", out_dir / "configs"
    for d in (files, decoded, configs):
        d.mkdir(parents=True)

    names = _images(files)
    index = {"images": {}, "configs": {}}
    rgb = {}
    for name, filename in names.items():
        with Image.open(files / filename) as raw:
            im = ImageOps.exif_transpose(raw).convert("RGB")
            orientation = raw.getexif().get(0x0112, 1)
        # Plain pixels: transformers 5 composites onto white any PIL image still carrying
        # info["transparency"] (kept by convert("RGB") of a palette PNG); vlmsh drops alpha instead.
        rgb[name] = Image.fromarray(np.asarray(im))
        if name != "large":  # checked through its pixel_values; its raw pixels would be 360 KB
            (decoded / f"{name}.rgb").write_bytes(np.asarray(im).tobytes())
        index["images"][name] = {"file": f"files/{filename}", "width": im.width, "height": im.height,
                                 "orientation": orientation}

    tensors = {}
    small = [n for n in names if n != "large"]
    for cfg, (proc, pad, subset) in _processors().items():
        proc.save_pretrained(configs / cfg)
        chosen = subset or small
        for name in chosen:
            pv = proc(rgb[name], return_tensors="np")["pixel_values"][0]
            if pad:
                mean_color = tuple(int(x * 255) for x in proc.image_mean)
                plain = CLIPImageProcessorPil(**{k: getattr(proc, k) for k in ("size", "crop_size", "resample")})
                ref = plain(_expand2square(rgb[name], mean_color), return_tensors="np")["pixel_values"][0]
                assert np.array_equal(pv, ref), f"transformers pad differs from expand2square for {name}"
            t = torch.from_numpy(np.ascontiguousarray(pv, dtype=np.float32))
            tensors[f"{cfg}/{name}"] = t.to(torch.float16) if "336" in cfg else t
        index["configs"][cfg] = {"folder": f"configs/{cfg}", "pad": pad, "images": chosen,
                                 "dtype": "F16" if "336" in cfg else "F32"}

    save_file(tensors, str(out_dir / "pixel_values.safetensors"))
    (out_dir / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
