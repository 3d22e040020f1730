"""Quantization and GGUF fixtures: small GGUF files holding one tensor of every supported ggml type,
golden float32 decodings from gguf-py's reference dequantizer, and metadata of every value type.

Outputs (data/quant/):
  types.gguf        one [rows, cols] tensor per type, named "t.<type>", plus every metadata value type
  align64.gguf      two tensors with general.alignment = 64 and a 3-D tensor
  golden/<type>.f32 raw little-endian float32 decodings of each tensor in types.gguf
  index.json        per tensor: name, type, ggml type id, numpy shape, golden file, raw block bytes file
  blocks/<type>.bin the tensor's raw encoded bytes (as written into types.gguf)
"""
import json

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFValueType as V, GGUFWriter
from gguf.quants import dequantize, quantize

# Types gguf-py can quantize from floats; K-quants are written as random blocks instead.
QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
RANDOM_BLOCKS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
# Byte offsets of each K-quant block's f16 scale fields (d, dmin), kept in a sane range so the
# decoded values are finite and of moderate size.
SCALE_OFFSETS = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
BLOCK = {T.Q2_K: (256, 84), T.Q3_K: (256, 110), T.Q4_K: (256, 144), T.Q5_K: (256, 176), T.Q6_K: (256, 210)}

ROWS, COLS = 3, 512


def encode(rng, qtype):
    """Returns (raw bytes as uint8 [ROWS, rowBytes] or typed array, golden float32 [ROWS, COLS])."""
    if qtype in QUANTIZABLE:
        x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
        if qtype == T.F32:
            return x, x.copy()
        if qtype == T.F16:
            h = x.astype(np.float16)
            return h, h.astype(np.float32)
        q = quantize(x, qtype)
        return q, dequantize(q, qtype).astype(np.float32)
    block_elems, block_bytes = BLOCK[qtype]
    blocks = ROWS * COLS // block_elems
    raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        scale = rng.uniform(0.001, 0.05, size=blocks).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(blocks, 2)
    raw = raw.reshape(ROWS, COLS // block_elems * block_bytes)
    return raw, dequantize(raw, qtype).astype(np.float32)


def add_metadata(w):
    w.add_string("general.name", "vlmsh quant fixture")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_uint64("test.u64", 18_000_000_000_000_000_000)
    w.add_int64("test.i64", -9_000_000_000_000_000_000)
    w.add_float32("test.f32", 1.5)
    w.add_float64("test.f64", -2.25)
    w.add_bool("test.true", True)
    w.add_bool("test.false", False)
    w.add_string("test.string", "héllo ✓")
    w.add_array("test.ints", [1, -2, 3])
    w.add_key_value("test.u8s", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_array("test.floats", [0.5, -1.0])
    w.add_array("test.strings", ["a", "", "ü"])
    w.add_array("test.bools", [True, False, True])
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_array("test.nested_strings", [["x"], ["y", "z"]])
    w.add_uint32("llama.block_count", 2)


def generate(out_dir):
    rng = np.random.default_rng(1234)
    (out_dir / "golden").mkdir(exist_ok=True)
    (out_dir / "blocks").mkdir(exist_ok=True)
    index = {"file": "types.gguf", "tensors": []}

    w = GGUFWriter(str(out_dir / "types.gguf"), "llama")
    add_metadata(w)
    for qtype in QUANTIZABLE + RANDOM_BLOCKS:
        name = f"t.{qtype.name.lower()}"
        data, golden = encode(rng, qtype)
        assert golden.shape == (ROWS, COLS), (qtype, golden.shape)
        raw_dtype = None if qtype in (T.F32, T.F16) else qtype
        if raw_dtype is not None and data.dtype != np.uint8:
            data = data.view(np.uint8)
        w.add_tensor(name, data, raw_dtype=raw_dtype)
        golden.astype("<f4").tofile(out_dir / "golden" / f"{qtype.name.lower()}.f32")
        np.ascontiguousarray(data).view(np.uint8).tofile(out_dir / "blocks" / f"{qtype.name.lower()}.bin")
        index["tensors"].append({
            "name": name, "type": qtype.name, "type_id": int(qtype), "shape": [ROWS, COLS],
            "golden": f"golden/{qtype.name.lower()}.f32", "blocks": f"blocks/{qtype.name.lower()}.bin",
        })
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Custom alignment, a 1-D tensor and a 3-D tensor (numpy shape [2, 3, 64] -> ggml dims [64, 3, 2]).
    w = GGUFWriter(str(out_dir / "align64.gguf"), "llama")
    w.add_custom_alignment(64)
    w.add_tensor("vec", np.arange(5, dtype=np.float32))
    w.add_tensor("cube", np.arange(2 * 3 * 64, dtype=np.float32).reshape(2, 3, 64))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n")
