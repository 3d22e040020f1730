"""PyTorch checkpoints (torch.save's zip format) beside their safetensors copies, and hostile ones.

Written under data/torch_bin/:
  clip-llama-bin/     data/llava/clip-llama saved with safe_serialization=False and a small max_shard_size:
                      pytorch_model-0000N-of-0000M.bin + pytorch_model.bin.index.json, the other files copied from
                      clip-llama (same config, same tensors: logits must match bit for bit). transformers 5 writes
                      safetensors only, so then the shards are written as 4.x's save_pretrained wrote them
                      (torch.save of each shard's dict, index with metadata.total_size and weight_map).
  llama-bin/          data/tinyllama/llama's tensors torch.save'd as one pytorch_model.bin (plain dict).
  projector/          mm_projector.bin as LLaVA's trainer writes it for tune_mm_mlp_adapter (a dict of
                      detached CPU clones of original-llava's model.mm_projector.* tensors).
  views.bin           a state dict (OrderedDict with _metadata) of views: a transpose, row and column slices
                      at storage offsets, a tensor sharing their storage, float16, bfloat16, a 0-d tensor,
                      an nn.Parameter, an int64 buffer and a non-tensor value; views-p4.bin the same with
                      pickle protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL). views.json: shapes and values.
  views-zip64.bin     views.bin's records re-zipped with zip64 fields everywhere (sizes, offsets, end
                      record), as torch writes shards past 4 GB; records no longer 64-byte aligned.
  legacy.bin          torch.save(..., _use_new_zipfile_serialization=False): the pre-1.6 format.
  evil-system.bin     a real tensor, then a value whose unpickling calls os.system (GLOBAL posix.system).
  evil-eval.bin       a value whose unpickling calls builtins.eval on Python that runs a command.
  evil-p4.bin         evil-system with pickle protocol 4 (the global arrives by STACK_GLOBAL).
                      Each command would create /tmp/vlmsh-torch-pickle-ran.
  lie-*.bin           torch-shaped archives whose pickle lies: a stride past the storage, an offset past it,
                      a storage count larger than its record, a missing record, an unknown storage type,
                      a cut pickle; compressed.bin has its records deflated.
"""
import collections
import json
import os
import pathlib
import pickle
import shutil
import zipfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
LLAVA = HERE / "data" / "llava"
TINYLLAMA = HERE / "data" / "tinyllama"
MARKER = "/tmp/vlmsh-torch-pickle-ran"


class RunsCommand:
    """Unpickling this calls os.system (what a hostile checkpoint does)."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class EvalsCommand:
    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {MARKER}')",))


def clip_llama_bin(out):
    from transformers import LlavaForConditionalGeneration
    src = LLAVA / "clip-llama"
    folder = out / "clip-llama-bin"
    shutil.rmtree(folder, ignore_errors=True)
    model = LlavaForConditionalGeneration.from_pretrained(src, torch_dtype=torch.float32)
    try:
        model.save_pretrained(folder, safe_serialization=False, max_shard_size="150KB")
    except (TypeError, ValueError):
        pass
    if not (folder / "pytorch_model.bin.index.json").exists():
        # transformers 5 writes safetensors whatever safe_serialization says: write the .bin shards
        # the way 4.x did, from the hub-layout tensors.
        shutil.rmtree(folder, ignore_errors=True)
        save_sharded_bin(load_file(src / "model.safetensors"), folder, 150_000)
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json"]:
        shutil.copy(src / name, folder / name)
    for f in folder.iterdir():
        if f.name not in {"config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                          "processor_config.json", "pytorch_model.bin.index.json"} and not f.name.startswith("pytorch_model-"):
            f.unlink()
    # Same weights as the safetensors copy, whatever names save_pretrained chose.
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    shards = {s: torch.load(folder / s, weights_only=True) for s in set(index["weight_map"].values())}
    saved = {k: shards[s][k] for k, s in index["weight_map"].items()}
    original = load_file(src / "model.safetensors")
    assert sorted(t.numel() for t in saved.values()) == sorted(t.numel() for t in original.values())


def save_sharded_bin(state, folder, max_bytes):
    """What transformers' save_pretrained(safe_serialization=False) writes, for versions that no longer do."""
    folder.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    for k in state:
        n = state[k].numel() * state[k].element_size()
        if current and size + n > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k] = state[k]
        size += n
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, folder / name)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")


def llama_bin(out):
    folder = out / "llama-bin"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy(TINYLLAMA / "llama" / "config.json", folder / "config.json")
    torch.save(dict(sorted(load_file(TINYLLAMA / "llama" / "model.safetensors").items())), folder / "pytorch_model.bin")


def projector(out):
    folder = out / "projector"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    state = load_file(LLAVA / "original-llava" / "model.safetensors")
    # LLaVA's get_mm_adapter_state_maybe_zero_3: {k: t.detach().cpu().clone()} for keys with mm_projector.
    weights = {k: t.detach().cpu().clone() for k, t in state.items() if "mm_projector" in k}
    assert len(weights) == 4
    torch.save(weights, folder / "mm_projector.bin")


def views(out):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    state = collections.OrderedDict()
    state["transposed"] = base.t()
    state["rows"] = base[1:3]
    state["columns"] = base[:, 2:5]
    state["shared"] = base
    state["half"] = (base * 3).half()
    state["bf16"] = (base - 1).bfloat16().t()
    state["scalar"] = torch.tensor(2.5)
    state["parameter"] = torch.nn.Parameter(torch.linspace(-1, 1, 5))
    state["position_ids"] = torch.arange(5)
    state["step"] = 7
    state._metadata = collections.OrderedDict([("", {"version": 1})])
    torch.save(state, out / "views.bin")
    torch.save(state, out / "views-p4.bin", pickle_protocol=4)
    golden = {k: {"shape": list(v.shape), "values": v.detach().float().reshape(-1).tolist()}
              for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}
    (out / "views.json").write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    # torch's own restricted loader does not take protocol 4's FRAME; this file is ours, load it fully.
    zip64(out / "views.bin", out / "views-zip64.bin")
    for name, restricted in [("views.bin", True), ("views-p4.bin", False), ("views-zip64.bin", True)]:
        loaded = torch.load(out / name, weights_only=restricted)
        assert all(torch.equal(loaded[k], state[k]) for k in golden)


def zip64(source, target):
    """The records of `source` in an archive whose every size and offset goes through zip64 fields."""
    limit = zipfile.ZIP64_LIMIT
    zipfile.ZIP64_LIMIT = 0
    try:
        with zipfile.ZipFile(source) as z, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
            for info in z.infolist():
                out.writestr(info.filename.replace("views/", "views-zip64/", 1), z.read(info))
    finally:
        zipfile.ZIP64_LIMIT = limit
    with open(target, "rb") as f:
        assert b"PK\x06\x06" in f.read(), "expected a zip64 end record"


class Storage:
    """Stands for a storage in a hand-made pickle: persistent_id turns it into torch's tuple."""

    def __init__(self, key, numel, kind=torch.FloatStorage):
        self.key, self.numel, self.kind = key, numel, kind


class View:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None


def torch_like_zip(path, state, records, pickle_bytes=None, compression=zipfile.ZIP_STORED):
    """An archive laid out like torch.save's, around a pickle of `state` (or the given bytes)."""
    if pickle_bytes is None:
        import io
        buffer = io.BytesIO()
        TorchLikePickler(buffer, protocol=2).dump(state)
        pickle_bytes = buffer.getvalue()
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")


def hostile(out):
    torch.save({"weight": torch.ones(2, 3), "payload": RunsCommand()}, out / "evil-system.bin")
    torch.save({"payload": EvalsCommand()}, out / "evil-eval.bin")
    torch.save({"weight": torch.ones(2, 3), "payload": RunsCommand()}, out / "evil-p4.bin", pickle_protocol=4)
    torch.save({"w": torch.ones(2)}, out / "legacy.bin", _use_new_zipfile_serialization=False)

    six = torch.arange(6, dtype=torch.float32).numpy().tobytes()
    cases = {
        "lie-stride.bin": {"w": View(Storage("0", 6), 0, [2, 3], [3, 100])},
        "lie-offset.bin": {"w": View(Storage("0", 6), 5, [2, 3], [3, 1])},
        "lie-count.bin": {"w": View(Storage("0", 1000), 0, [2, 3], [3, 1])},
        "lie-record.bin": {"w": View(Storage("9", 6), 0, [2, 3], [3, 1])},
        "lie-storage-type.bin": {"w": View(Storage("0", 6, torch.ComplexFloatStorage), 0, [2, 3], [3, 1])},
        "lie-broadcast.bin": {"w": View(Storage("0", 6), 0, [1 << 40, 6], [0, 1])},
    }
    for name, state in cases.items():
        torch_like_zip(out / name, state, {"0": six})
    import io
    buffer = io.BytesIO()
    TorchLikePickler(buffer, protocol=2).dump({"w": View(Storage("0", 6), 0, [2, 3], [3, 1])})
    whole = buffer.getvalue()
    torch_like_zip(out / "lie-cut-pickle.bin", None, {"0": six}, pickle_bytes=whole[: len(whole) // 2])
    torch_like_zip(out / "compressed.bin", {"w": View(Storage("0", 6), 0, [2, 3], [3, 1])}, {"0": six},
                   compression=zipfile.ZIP_DEFLATED)
    # Check the hostile files are refused by torch's own restricted loader too, and run nothing.
    for name in ["evil-system.bin", "evil-eval.bin", "evil-p4.bin"]:
        try:
            torch.load(out / name, weights_only=True)
            raise AssertionError(f"torch loaded {name}")
        except pickle.UnpicklingError:
            pass
    assert not os.path.exists(MARKER)


def generate(out):
    out.mkdir(parents=True, exist_ok=True)
    clip_llama_bin(out)
    llama_bin(out)
    projector(out)
    views(out)
    hostile(out)
