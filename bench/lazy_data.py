#!/usr/bin/env python3
"""Start-up cost of `vlmsh finetune` on a large LLaVA-style data file (read lazily): seconds and
peak resident memory (VmHWM) when training starts (data indexed, trainer ready: the peak before
step 1) and when step 1 is reported (its own forward and backward included). With a file of at
most 10000 rows (read eagerly) there is no training-start line, and only the step-1 numbers show.

Rows look like LLaVA-665k's: an id, an image path (a handful of small PNGs the rows share),
2–6 human/gpt turns. The file is generated under --dir (not kept in the repository); --format
json writes LLaVA's usual array, jsonl one row a line. See bench/README.md.

    python3 bench/lazy_data.py [--vlmsh .build/release/vlmsh] [--rows 1000000] [--format json]
                               [--model ~/.vlmsh/models/vlmsh-demo] [--group-by-modality-length]
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

WORDS = ("the a red blue green small large cat dog star square circle left right above below "
         "picture shows what is there how many colour shape near far one two three").split()


def png(path, size, rgb):
    """A solid `size`×`size` RGB PNG."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def row(n, rng):
    turns = []
    for t in range(rng.choice((2, 4, 6))):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        if t % 2 == 0:
            turns.append({"from": "human", "value": ("<image>\n" if t == 0 else "") + text + "?"})
        else:
            turns.append({"from": "gpt", "value": text.capitalize() + "."})
    return {"id": f"{n:09d}", "image": f"images/{n % 8}.png", "conversations": turns}


def generate(path, rows, fmt, seed=1):
    rng = random.Random(seed)
    with open(path, "w") as f:
        if fmt == "json":
            f.write("[\n")
        for n in range(rows):
            text = json.dumps(row(n, rng))
            if fmt == "json":
                f.write(text + (",\n" if n + 1 < rows else "\n"))
            else:
                f.write(text + "\n")
        if fmt == "json":
            f.write("]\n")


def status_mb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class StartWatcher(threading.Thread):
    """Reads the run's stderr; VmHWM when it says training starts ("read as training goes", printed
    after the data and the trainer are ready, before step 1) is the peak before step 1."""
    def __init__(self, process):
        super().__init__(daemon=True)
        self.process, self.peak, self.seconds, self.text = process, None, None, []
        self.started = time.monotonic()

    def run(self):
        for line in self.process.stderr:
            self.text.append(line)
            if self.peak is None and "read as training goes" in line:
                self.peak = status_mb(self.process.pid, "VmHWM")
                self.seconds = time.monotonic() - self.started


def run(vlmsh, model, data, out, extra):
    command = [vlmsh, "finetune", "--model", model, "--data", data, "--out", out, "--steps", "2",
               "--mode", "lora+projector", "--json"] + extra
    # The run's store goes beside the data; the demo model finds its text model in ~/.vlmsh/models.
    home = os.path.dirname(out)
    if not os.path.exists(os.path.join(home, "models")):
        os.symlink(os.path.expanduser("~/.vlmsh/models"), os.path.join(home, "models"))
    env = dict(os.environ, VLMSH_HOME=home)
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watcher = StartWatcher(process)
    watcher.start()
    result = None
    for line in process.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if result is None and event.get("step") == 1:
            result = {"seconds_to_step_1": time.monotonic() - started, "peak_rss_mb_at_step_1": status_mb(process.pid, "VmHWM")}
    process.wait()
    watcher.join()
    if result is None:
        sys.exit(f"no step 1 (exit {process.returncode}): {''.join(watcher.text)[-2000:]}")
    result.update(seconds_to_training_start=watcher.seconds, peak_rss_mb_before_step_1=watcher.peak)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vlmsh", default=".build/release/vlmsh")
    parser.add_argument("--model", default=os.path.expanduser("~/.vlmsh/models/vlmsh-demo"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("json", "jsonl"), default="json")
    parser.add_argument("--dir", help="where the data goes (default: a temporary folder, removed)")
    parser.add_argument("--group-by-modality-length", action="store_true")
    args = parser.parse_args()

    work = args.dir or tempfile.mkdtemp(prefix="vlmsh-lazy-data-")
    os.makedirs(os.path.join(work, "images"), exist_ok=True)
    for i in range(8):
        png(os.path.join(work, "images", f"{i}.png"), 32, (30 * i, 255 - 30 * i, 128))
    data = os.path.join(work, f"train.{args.format}")
    if not os.path.exists(data):
        generate(data, args.rows, args.format)
    extra = ["--group-by-modality-length"] if args.group_by_modality_length else []
    result = run(os.path.abspath(args.vlmsh), args.model, data, os.path.join(work, "run"), extra)
    result.update(rows=args.rows, format=args.format, file_mb=round(os.path.getsize(data) / 1e6, 1),
                  group_by_modality_length=args.group_by_modality_length)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
