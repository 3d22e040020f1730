#!/usr/bin/env python3
"""An evaluation set for the demo VLM drawn by another renderer than its training data.

vlmsh's own shapes (`vlmsh make-demo-data`, Sources/VLMDemo/ShapeScene.swift) are 4x4-supersampled
masks of fixed unit-box geometry on a fixed palette. These are drawn by Pillow's ImageDraw with
their own geometry (star point ratios, cross arm widths, heart curve, slight rotations and
stretches), CSS-like palettes with per-picture jitter, pastel and grey backgrounds, sides of
128-640 px, with or without antialiasing (drawn at 4x and reduced by Lanczos), some saved as JPEG.
Every picture is square (the demo's processor centre-crops) and holds one to four shapes of
different kinds and different colours that do not overlap, so every question has one answer.

Writes, next to this file:
  images/foreign-NNN.(png|jpg)
  test.json         one question per record: kind colour|shape|count, group "demo" (the demo's own
                    wording, "What colour is the star?") or "other" (another wording)
  pictures.json     what each picture holds: side, background, each shape's kind, colour, centre
                    and radius in pixels
  two-pictures.json chats with two pictures attached one after the other: a question about the
                    first (answered), then a question about the second, whose answer differs
                    from the first picture's; scored on the last answer (group "newest")
Run with the reference venv (`make fixtures` builds it): python sessions/data/foreign/generate.py
The same seed always writes the same files.
"""
import json
import math
import pathlib
import random

from PIL import Image, ImageDraw

HERE = pathlib.Path(__file__).resolve().parent
SEED = 2026
IMAGES = 200
CHATS = 120

KINDS = ["circle", "square", "triangle", "star", "cross", "heart", "diamond"]
# Two shades per name, as different drawing programs pick them; jittered per picture.
PALETTE = {
    "red": [(255, 0, 0), (205, 25, 45)],
    "green": [(0, 150, 0), (60, 185, 75)],
    "blue": [(0, 90, 255), (30, 55, 175)],
    "yellow": [(255, 225, 25), (240, 240, 10)],
    "purple": [(128, 0, 128), (150, 70, 210)],
    "orange": [(255, 135, 0), (240, 110, 40)],
}
NUMBERS = ["Zero", "One", "Two", "Three", "Four"]

WORDINGS = {
    "colour": ("What colour is the {kind}?", [
        "What color is the {kind}?", "Which colour is the {kind}?", "What colour is the {kind} in the picture?",
        "What is the colour of the {kind}?", "What color is the {kind} shape?", "Tell me the colour of the {kind}.",
    ]),
    "shape": ("What shape is the {colour} object?", [
        "What shape is the {colour} thing?", "Which shape is {colour}?", "What is the {colour} shape?",
        "What shape is the {colour} one in the picture?", "What kind of shape is the {colour} object?",
        "Which shape do you see in {colour}?",
    ]),
    "count": ("How many shapes are there?", [
        "How many objects are in the picture?", "How many shapes do you see?", "Count the shapes.",
        "How many things are in the image?", "How many shapes are in this picture?",
    ]),
}


def background(rng):
    kind = rng.choice(["white", "black", "grey", "pastel"])
    if kind == "white":
        return (255, 255, 255)
    if kind == "black":
        return (0, 0, 0)
    if kind == "grey":
        v = rng.randint(95, 175)
        return (v, v, v)
    # A light, weakly saturated hue.
    h, s = rng.random(), rng.uniform(0.12, 0.3)
    return tuple(int(round(255 * (1 - s * max(0.0, min(1.0, abs((h * 6 + k) % 6 - 3) - 1))))) for k in (0, 4, 2))


def colour_rgb(name, rng):
    base = rng.choice(PALETTE[name])
    return tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in base)


def outline(kind, rng):
    """The shape's outline as unit-box points (x right, y down), before rotation and stretch."""
    if kind == "triangle":
        return [(0, -1), (1, 0.8), (-1, 0.8)]
    if kind == "diamond":
        return [(0, -1), (0.8, 0), (0, 1), (-0.8, 0)]
    if kind == "square":
        return [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    if kind == "star":
        inner = rng.uniform(0.38, 0.5)
        return [((1 if k % 2 == 0 else inner) * math.cos(math.radians(-90 + 36 * k)),
                 (1 if k % 2 == 0 else inner) * math.sin(math.radians(-90 + 36 * k)) + 0.1) for k in range(10)]
    if kind == "cross":
        a = rng.uniform(0.28, 0.42)
        return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
    if kind == "heart":
        pts = []
        for i in range(72):
            t = 2 * math.pi * i / 72
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17, -(y - 2.5) / 15))
        return pts
    raise ValueError(kind)


def draw_shape(draw, kind, cx, cy, radius, fill, rng, scale):
    cx, cy, radius = cx * scale, cy * scale, radius * scale
    if kind == "circle":
        stretch = rng.uniform(0.93, 1.07)
        draw.ellipse([cx - radius * stretch, cy - radius / stretch, cx + radius * stretch, cy + radius / stretch], fill=fill)
        return
    angle = math.radians(rng.uniform(-10, 10))
    sx = rng.uniform(0.9, 1.1)
    points = []
    for x, y in outline(kind, rng):
        x *= sx
        points.append((cx + radius * (x * math.cos(angle) - y * math.sin(angle)),
                       cy + radius * (x * math.sin(angle) + y * math.cos(angle))))
    draw.polygon(points, fill=fill)


def picture(rng, index):
    side = rng.randint(128, 640)
    count = rng.randint(1, 4)
    kinds = rng.sample(KINDS, count)
    colours = rng.sample(list(PALETTE), count)
    # Sizes from about 9 % to 20 % of the side as a radius (fewer shapes may be larger); centres
    # anywhere that keeps the shape inside and apart from the others.
    placed = []
    while len(placed) < count:
        placed = []
        for _ in range(200):
            if len(placed) == count:
                break
            r = side * rng.uniform(0.09, 0.2 if count > 2 else 0.28)
            cx, cy = rng.uniform(r + 2, side - r - 2), rng.uniform(r + 2, side - r - 2)
            if all(math.hypot(cx - x, cy - y) > r + q + 3 for x, y, q in placed):
                placed.append((cx, cy, r))
    antialias = rng.random() < 0.6
    scale = 4 if antialias else 1
    bg = background(rng)
    image = Image.new("RGB", (side * scale, side * scale), bg)
    draw = ImageDraw.Draw(image)
    for kind, colour, (cx, cy, r) in zip(kinds, colours, placed):
        draw_shape(draw, kind, cx, cy, r, colour_rgb(colour, rng), rng, scale)
    if antialias:
        image = image.resize((side, side), Image.LANCZOS)
    jpeg = rng.random() < 0.3
    name = f"foreign-{index:03d}." + ("jpg" if jpeg else "png")
    path = HERE / "images" / name
    if jpeg:
        image.save(path, quality=rng.randint(60, 92))
    else:
        image.save(path, optimize=True)
    return {"image": "images/" + name, "side": side, "background": list(bg), "antialias": antialias, "jpeg": jpeg,
            "shapes": [{"kind": k, "colour": c, "x": round(x, 2), "y": round(y, 2), "radius": round(r, 2)}
                       for k, c, (x, y, r) in zip(kinds, colours, placed)]}


def question(kind, shapes, rng, own):
    target = rng.choice(shapes)
    demo, others = WORDINGS[kind]
    text = (demo if own else rng.choice(others)).format(kind=target["kind"], colour=target["colour"])
    answer = {"colour": target["colour"].capitalize() + ".", "shape": target["kind"].capitalize() + ".",
              "count": NUMBERS[len(shapes)] + "."}[kind]
    return text, answer, target


def main():
    rng = random.Random(SEED)
    (HERE / "images").mkdir(exist_ok=True)
    for old in (HERE / "images").iterdir():
        old.unlink()
    pictures = [picture(rng, i) for i in range(IMAGES)]
    records = []
    for p in pictures:
        for kind in ["colour", "shape", "count"]:
            own = rng.random() < 0.5
            text, answer, _ = question(kind, p["shapes"], rng, own)
            records.append({"id": f"{pathlib.Path(p['image']).stem}-{kind}", "image": p["image"], "kind": kind,
                            "group": "demo" if own else "other",
                            "conversations": [{"from": "human", "value": "<image>\n" + text}, {"from": "gpt", "value": answer}]})
    chats = []
    while len(chats) < CHATS:
        first, second = rng.sample(pictures, 2)
        kind = ["colour", "shape", "count"][len(chats) % 3]
        own = rng.random() < 0.5
        demo, others = WORDINGS[kind]
        wording = demo if own else rng.choice(others)
        # The second question must have one answer on the second picture and a different one
        # (or none) on the first, so an answer about the older picture is wrong.
        if kind == "colour":
            target = rng.choice(second["shapes"])
            old = [s["colour"] for s in first["shapes"] if s["kind"] == target["kind"]]
            if target["colour"] in old:
                continue
            text, answer = wording.format(kind=target["kind"], colour=""), target["colour"].capitalize() + "."
        elif kind == "shape":
            target = rng.choice(second["shapes"])
            old = [s["kind"] for s in first["shapes"] if s["colour"] == target["colour"]]
            if target["kind"] in old:
                continue
            text, answer = wording.format(kind="", colour=target["colour"]), target["kind"].capitalize() + "."
        else:
            if len(first["shapes"]) == len(second["shapes"]):
                continue
            text, answer = wording, NUMBERS[len(second["shapes"])] + "."
        q1, a1, _ = question(rng.choice(["colour", "shape", "count"]), first["shapes"], rng, True)
        chats.append({"id": f"chat-{len(chats):03d}-{kind}", "image": [first["image"], second["image"]], "kind": kind,
                      "group": "newest",
                      "conversations": [{"from": "human", "value": "<image>\n" + q1}, {"from": "gpt", "value": a1},
                                        {"from": "human", "value": "<image>\n" + text}, {"from": "gpt", "value": answer}]})
    (HERE / "pictures.json").write_text(json.dumps(pictures, indent=1) + "\n")
    (HERE / "test.json").write_text(json.dumps(records, indent=1) + "\n")
    (HERE / "two-pictures.json").write_text(json.dumps(chats, indent=1) + "\n")
    print(f"{len(pictures)} pictures, {len(records)} questions, {len(chats)} two-picture chats in {HERE}")


if __name__ == "__main__":
    main()
