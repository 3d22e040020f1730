"""Safetensors fixtures: small files in F32/F16/BF16, sharded checkpoints, and broken files.

golden.json holds every tensor's shape, dtype and values widened to float32 by torch, so the
Swift reader's F16/BF16 conversion is checked against torch's, bit for bit.
"""
import json
import shutil
import struct

import torch
from safetensors.torch import save_file


def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed.weight": torch.randn(6, 4, generator=g).to(torch.float32),
        "model.layers.0.proj.weight": torch.randn(3, 5, generator=g).to(torch.float16),
        "model.layers.0.norm.weight": torch.randn(7, generator=g).to(torch.bfloat16),
        "model.layers.1.conv.weight": torch.randn(2, 3, 2, 2, generator=g).to(torch.bfloat16),
        "model.scale": torch.tensor(0.3333, dtype=torch.float16),  # 0-D
        # Stored by some checkpoints (CLIP position ids); listed but not loadable.
        "model.position_ids": torch.arange(5, dtype=torch.int64).unsqueeze(0),
    }


def _golden(tensors):
    out = {}
    for name, t in tensors.items():
        if t.dtype == torch.int64:
            continue
        out[name] = {
            "dtype": {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[t.dtype],
            "shape": list(t.shape),
            "values": [float(v) for v in t.float().flatten().tolist()],
        }
    return out


def _raw(header, data=b"", length=None):
    """A safetensors file written by hand, so each defect is exactly the one we want."""
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def generate(out_dir):
    for sub in ["single", "sharded", "noindex", "bad"]:
        shutil.rmtree(out_dir / sub, ignore_errors=True)
        (out_dir / sub).mkdir(parents=True)

    meta = {"format": "pt", "producer": "vlmsh fixtures"}
    basic = _tensors(1)
    save_file(basic, out_dir / "basic.safetensors", metadata=meta)
    save_file(basic, out_dir / "single" / "model.safetensors", metadata=meta)

    # Two shards plus index, split as transformers would (weight_map names each tensor's file).
    sharded = _tensors(2)
    names = sorted(sharded)
    parts = [names[:3], names[3:]]
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: sharded[n] for n in part}, out_dir / "sharded" / fname, metadata={"format": "pt"})
        save_file({n: sharded[n] for n in part}, out_dir / "noindex" / f"part{i + 1}.safetensors")
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in sharded.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    # Broken inputs, one defect each.
    bad = out_dir / "bad"
    full = (out_dir / "basic.safetensors").read_bytes()
    hlen = struct.unpack("<Q", full[:8])[0]
    (bad / "short.safetensors").write_bytes(full[:5])
    (bad / "truncated.safetensors").write_bytes(full[: 8 + hlen + 40])  # data cut short
    (bad / "header_past_end.safetensors").write_bytes(full[: 8 + hlen // 2])
    (bad / "huge_header.safetensors").write_bytes(_raw({}, length=1 << 60))
    (bad / "bad_json.safetensors").write_bytes(struct.pack("<Q", 12) + b'{"a": [1, 2' + b"\0" * 16)
    f32 = struct.pack("<4f", 1, 2, 3, 4)
    (bad / "offsets_past_end.safetensors").write_bytes(
        _raw({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [4, 20]}}, f32))
    (bad / "size_mismatch.safetensors").write_bytes(
        _raw({"w": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 16]}}, f32))
    (bad / "unknown_dtype.safetensors").write_bytes(
        _raw({"w": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}, f32))
    (bad / "bad_metadata.safetensors").write_bytes(
        _raw({"__metadata__": {"n": 3}, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, f32))

    # Index naming a shard that is not there.
    ms = bad / "missing_shard"
    ms.mkdir()
    shutil.copy(out_dir / "sharded" / "model-00001-of-00002.safetensors", ms)
    shutil.copy(out_dir / "sharded" / "model.safetensors.index.json", ms)
    # Index listing a tensor its shard does not hold.
    at = bad / "absent_tensor"
    at.mkdir()
    for f in (out_dir / "sharded").iterdir():
        shutil.copy(f, at)
    index = {**index, "weight_map": {**weight_map, "model.ghost.weight": "model-00001-of-00002.safetensors"}}
    (at / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    golden = {"metadata": meta, "basic": _golden(basic), "sharded": _golden(sharded),
              "shards": {n: weight_map[n] for n in sorted(weight_map)}}
    (out_dir / "golden.json").write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
