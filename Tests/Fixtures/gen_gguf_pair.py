"""A tiny LLaVA-1.5 as llama.cpp distributes it: a text GGUF plus an mmproj GGUF, made with llama.cpp's
own converters, and the outputs transformers computes for the same weights.

Files under data/gguf_pair/ (see the README written there):
  tiny-llava-text-f16.gguf     convert_hf_to_gguf.py --outtype f16 of the Llama half (LlamaForCausalLM).
  tiny-llava-mmproj-f16.gguf   tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py of the CLIP tower
                               (--clip-model-is-vision) with a llava.projector file (the mlp2x_gelu projector).
  hostile/*.gguf               the mmproj with one thing broken (tests expect one clear error line).
  images/                      landscape, portrait and square noise PNGs.
  golden.json + golden.f32     transformers' image embeddings, last-position logits and 16 greedy tokens.

The converters come from the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist, downloaded into
~/.vlmsh/cache when missing. The reference model's weights are rounded to float16 wherever the converters
store float16 (every tensor with two or more dimensions), so goldens are what the GGUF pair holds.
"""
import copy
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (CLIPVisionModel, LlamaForCausalLM, LlavaConfig,  # noqa: E402
                          LlavaForConditionalGeneration)

import gen_llava  # noqa: E402

LLAMA_CPP_PYTHON = "0.3.36"
CACHE = pathlib.Path(os.environ.get("VLMSH_HOME", pathlib.Path.home() / ".vlmsh")) / "cache"
VENDOR = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
NEW_TOKENS = 16
IMAGE_SIZE, PATCH_SIZE = 32, 8
IMAGES = {"landscape.png": (48, 24), "portrait.png": (20, 40), "square.png": (30, 30)}
QUESTIONS = {"landscape.png": "What is in the image?", "portrait.png": "Describe the picture.",
             "square.png": "What colors do you see?"}
TEXT_FILE = "tiny-llava-text-f16.gguf"
MMPROJ_FILE = "tiny-llava-mmproj-f16.gguf"

# Runs the legacy mmproj converter with transformers 5's CLIPVisionModel wrapped back into the
# transformers 4 layout it expects (`model.vision_model.*`, state-dict keys `vision_model.*`).
LEGACY_RUNNER = r"""
import runpy, sys, torch, transformers
import transformers.models.clip as clip_package
import transformers.models.clip.modeling_clip as modeling_clip
Inner = modeling_clip.CLIPVisionModel
class LegacyCLIPVisionModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.vision_model = inner
    @classmethod
    def from_pretrained(cls, path, **kwargs):
        return cls(Inner.from_pretrained(path, **kwargs))
# Every module the lazy `from transformers import ...` may resolve the name through.
for module in (transformers, clip_package, modeling_clip):
    setattr(module, "CLIPVisionModel", LegacyCLIPVisionModel)
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def ensure_llama_cpp():
    """The vendored llama.cpp converters, from the llama-cpp-python sdist (PyPI JSON API, curl-like download)."""
    if (VENDOR / "convert_hf_to_gguf.py").exists():
        return VENDOR
    CACHE.mkdir(parents=True, exist_ok=True)
    base = "https://pypi.org/pypi/llama-cpp-python/json"
    with urllib.request.urlopen(base, timeout=120) as r:
        meta = json.load(r)
    files = meta["releases"][LLAMA_CPP_PYTHON]
    sdist = next(f for f in files if f["packagetype"] == "sdist")
    url = urllib.parse.urljoin(base, sdist["url"])   # some mirrors answer with relative URLs
    tarball = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    print(f"[gguf_pair] downloading {url}", flush=True)
    with urllib.request.urlopen(url, timeout=600) as r, open(tarball, "wb") as f:
        shutil.copyfileobj(r, f)
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    wanted = [prefix + p for p in ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "tools/mtmd/")]
    with tarfile.open(tarball) as tf:
        members = [m for m in tf.getmembers() if any(m.name == w or m.name.startswith(w) for w in wanted)]
        tf.extractall(CACHE, members=members, filter="data")
    assert (VENDOR / "convert_hf_to_gguf.py").exists(), "sdist has no vendor/llama.cpp/convert_hf_to_gguf.py"
    return VENDOR


def run(cmd, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(VENDOR / "gguf-py"))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-4000:])
        raise SystemExit(f"[gguf_pair] failed: {' '.join(map(str, cmd))}")
    return res


def make_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4321)
    out = {}
    for name, (w, h) in IMAGES.items():
        noise = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        Image.fromarray(noise, "RGB").save(folder / name)
        out[name] = Image.open(folder / name)
    return out


def round_to_stored(model):
    """The converters store every tensor with >= 2 dims as float16 (the text one with --outtype f16, the
    mmproj one always); norms, biases and the class embedding stay float32."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(p.to(torch.float16).to(torch.float32))


def build_model(tmp):
    tok_config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                  "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  "model_max_length": 512, "padding_side": "left", "chat_template": gen_llava.LLAVA_TEMPLATE}
    text_dir = tmp / "text"
    text_dir.mkdir()
    tokenizer, _, image_id = gen_llava.write_tokenizer("tiny-spm", text_dir, tok_config, add_image_token=True)
    config = LlavaConfig(vision_config=gen_llava.clip_config(IMAGE_SIZE, PATCH_SIZE),
                         text_config=gen_llava.llama_config(image_id + 1), image_token_index=image_id,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", multimodal_projector_bias=True,
                         image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2, tie_word_embeddings=False)
    torch.manual_seed(230)
    model = LlavaForConditionalGeneration(config).eval()
    gen_llava.randomize(model, 230)
    model.generation_config.eos_token_id = None
    round_to_stored(model)
    return model, tokenizer, image_id, text_dir


def convert_text(model, text_dir, out_path):
    """The Llama half as its own LlamaForCausalLM folder, converted like any text model."""
    lm = LlamaForCausalLM(model.config.text_config).eval()
    lm.model.load_state_dict(model.model.language_model.state_dict())
    lm.lm_head.load_state_dict(model.lm_head.state_dict())
    lm.save_pretrained(text_dir)
    run([sys.executable, VENDOR / "convert_hf_to_gguf.py", text_dir, "--outtype", "f16", "--outfile", out_path])


def convert_mmproj(model, tmp, out_path):
    """The CLIP tower as a CLIPVisionModel folder plus llava_surgery's llava.projector, converted with the
    legacy image-encoder converter (what LLaVA-1.5 mmproj files on the hub were made with)."""
    vision_dir = tmp / "vision"
    clip = CLIPVisionModel(model.config.vision_config).eval()
    result = clip.load_state_dict(model.model.vision_tower.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    clip.save_pretrained(vision_dir)
    projector = {}
    for k, v in model.model.multi_modal_projector.state_dict().items():
        projector[k.replace("linear_1.", "model.mm_projector.0.").replace("linear_2.", "model.mm_projector.2.")] = v.clone()
    torch.save(projector, tmp / "llava.projector")
    runner = tmp / "legacy_runner.py"
    runner.write_text(LEGACY_RUNNER)
    out_dir = tmp / "mmproj"
    run([sys.executable, runner, VENDOR / "tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py",
         "-m", vision_dir, "--llava-projector", tmp / "llava.projector", "--output-dir", out_dir,
         "--clip-model-is-vision", "--projector-type", "mlp",
         "--image-mean", *map(str, gen_llava.CLIP_MEAN), "--image-std", *map(str, gen_llava.CLIP_STD)])
    shutil.move(out_dir / "mmproj-model-f16.gguf", out_path)


def check_stored(model, text_path, mmproj_path):
    """Every float16 tensor in the pair is what the reference model holds after round_to_stored, and every
    tensor the reference holds with >= 2 dims is float16 in the files."""
    sys.path.insert(0, str(VENDOR / "gguf-py"))
    import gguf
    mm = gguf.GGUFReader(str(mmproj_path))
    state = {("v." + k) if not k.startswith("v.") else k: v for k, v in model.model.vision_tower.state_dict().items()}
    types = {}
    for t in mm.tensors:
        types[t.name] = t.tensor_type.name
        data = np.array(t.data, dtype=np.float32)
        assert np.all(np.isfinite(data))
        assert (t.tensor_type.name == "F16") == (len([d for d in t.shape if d > 1]) >= 2), (t.name, t.tensor_type.name)
    for t in gguf.GGUFReader(str(text_path)).tensors:
        assert (t.tensor_type.name == "F16") == (len(t.shape) >= 2), (t.name, t.tensor_type.name)
    # Projector values, the simplest names to map, round-trip exactly.
    proj = model.model.multi_modal_projector
    for gname, ref in [("mm.0.weight", proj.linear_1.weight), ("mm.2.weight", proj.linear_2.weight),
                       ("mm.0.bias", proj.linear_1.bias), ("mm.2.bias", proj.linear_2.bias)]:
        t = next(t for t in mm.tensors if t.name == gname)
        got = np.array(t.data, dtype=np.float32).reshape(ref.shape)
        assert np.array_equal(got, ref.detach().numpy()), gname
    del state
    return types


def run_case(model, arrays, pixel_values, input_ids):
    with torch.no_grad():
        vis = model.model.vision_tower(pixel_values, output_hidden_states=True)
        selected = vis.hidden_states[-2][:, 1:]
        projected = model.model.multi_modal_projector(selected)
        ref = model.model.get_image_features(pixel_values=pixel_values).pooler_output
        assert torch.allclose(torch.stack(list(ref)), projected, atol=1e-6)
        ids = torch.tensor([input_ids])
        mask = torch.ones_like(ids)
        logits = model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask).logits[0, -1]
        out = model.generate(ids, pixel_values=pixel_values, output_scores=True, return_dict_in_generate=True,
                             max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, attention_mask=mask)
    greedy = out.sequences[0, ids.shape[1]:].tolist()
    assert len(greedy) == NEW_TOKENS
    margin = min((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item() for s in out.scores)
    top = logits.topk(5)
    return {"pixel_values": arrays.add(pixel_values), "vision_features": arrays.add(selected),
            "projector_output": arrays.add(projected), "last_logits": logits.tolist(),
            "top5_ids": top.indices.tolist(), "greedy_ids": greedy, "greedy_min_margin": margin}


def write_hostile(src, folder, rewriter_only=False):
    """The mmproj with one thing wrong each, rewritten with gguf-py (metadata and tensors copied).
    rewriter_only: write nothing, return the rewriting function (for other variants of the file)."""
    import gguf
    folder.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(src))

    def rewrite(name, override=None, drop_tensor=None, extra=None, transform=None, rename=None):
        w = gguf.GGUFWriter(str(folder / name), arch="clip")
        for field in reader.fields.values():
            key = field.name
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            vtype = field.types[0]
            if override and key in override:
                value, vtype = override[key][:2]
            elif vtype == gguf.GGUFValueType.ARRAY:
                value = field.contents()
            else:
                value = field.contents()
            if vtype == gguf.GGUFValueType.ARRAY:
                sub = field.types[-1] if not (override and key in override) else override[key][2]
                w.add_key_value(key, value, vtype, sub_type=sub)
            else:
                w.add_key_value(key, value, vtype)
        for key, (value, vtype, *sub) in (extra or {}).items():
            if vtype == gguf.GGUFValueType.ARRAY:
                w.add_key_value(key, value, vtype, sub_type=sub[0])
            else:
                w.add_key_value(key, value, vtype)
        for t in reader.tensors:
            if t.name == drop_tensor:
                continue
            data, dtype = (transform(t) if transform else None) or (np.array(t.data), t.tensor_type)
            # gguf-py takes a quantized tensor's shape in bytes per row, a float tensor's in elements.
            plain = dtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            w.add_tensor((rename or {}).get(t.name, t.name), data, raw_shape=list(reversed([int(d) for d in t.shape])) if plain else list(data.shape),
                         raw_dtype=dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    if rewriter_only:
        return rewrite
    U32 = gguf.GGUFValueType.UINT32
    rewrite("huge-image-size.gguf", override={"clip.vision.image_size": (1 << 30, U32)})
    rewrite("missing-tensor.gguf", drop_tensor="v.blk.1.attn_q.weight")
    rewrite("llava16.gguf", extra={
        "clip.vision.image_grid_pinpoints": ([32, 64, 64, 32, 64, 64], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32),
        "clip.vision.mm_patch_merge_type": ("spatial_unpad", gguf.GGUFValueType.STRING)})


Q8_0_FILE = "tiny-llava-mmproj-q8_0.gguf"
# The legacy converter's tensor names → the reference model's (CLIP's fc1 is `ffn_down`).
TOWER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_out": "self_attn.out_proj", "ffn_down": "mlp.fc1", "ffn_up": "mlp.fc2"}


def reference_name(gguf_name):
    if gguf_name.startswith("mm."):
        return "model.multi_modal_projector.linear_%d.%s" % (int(gguf_name.split(".")[1]) // 2 + 1, gguf_name.split(".")[2])
    _, _, layer, kind, part = gguf_name.split(".")
    return f"model.vision_tower.encoder.layers.{layer}.{TOWER_NAMES[kind]}.{part}"


def q8_0_variant(src, out_dir, model):
    """The mmproj with every linear weight (tower and projector) stored as Q8_0, as convert_hf_to_gguf's
    --outtype q8_0 writes mmproj files (the patch and position embeddings stay f16); returns a copy of the
    reference model holding the dequantized values."""
    import gguf
    from gguf import quants
    reference = copy.deepcopy(model)
    params = dict(reference.named_parameters())

    def to_q8_0(t):
        if t.tensor_type.name != "F16" or not t.name.endswith(".weight") or "embd" in t.name:
            return None
        values = np.array(t.data, dtype=np.float32)
        packed = quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
        restored = quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0).reshape(values.shape)
        with torch.no_grad():
            params[reference_name(t.name)].copy_(torch.from_numpy(restored.copy()))
        return packed, gguf.GGMLQuantizationType.Q8_0

    rewrite = write_hostile(src, out_dir / "q8_0", rewriter_only=True)
    rewrite(Q8_0_FILE, transform=to_q8_0)
    shutil.move(out_dir / "q8_0" / Q8_0_FILE, out_dir / Q8_0_FILE)
    (out_dir / "q8_0").rmdir()
    return reference


README = """# data/gguf_pair

A tiny random-weight LLaVA-1.5 as llama.cpp, Ollama and LM Studio distribute LLaVA: a text GGUF plus an mmproj
GGUF, both written by llama.cpp's own converters (the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist).
Written by `Tests/Fixtures/gen_gguf_pair.py` (`generate.py gguf_pair`); versions in VERSION.json.

## Model

`LlavaForConditionalGeneration`: CLIP vision (hidden 32, 3 layers, 4 heads, image 32, patch 8, quick_gelu) +
Llama (hidden 32, 2 layers, GQA 4/2, vocab 701 = tiny-spm + special `<image>` 700, untied), `vision_feature_layer`
-2, strategy `default` (CLS dropped, 16 tokens/image), projector gelu with bias. Seed 230. Every parameter with two
or more dimensions is rounded to float16 before anything else (the converters store those as float16), so
transformers' outputs are the outputs of the weights in the files.

## Files

- `tiny-llava-text-f16.gguf`: the Llama half saved as a `LlamaForCausalLM` folder (with the tokenizer and the
  llava-1.5 chat template in tokenizer_config.json), then `convert_hf_to_gguf.py --outtype f16` (Q/K rows permuted,
  2-D tensors f16, norms f32, vocab from tokenizer.json).
- `tiny-llava-mmproj-f16.gguf`: the CLIP tower saved as a `CLIPVisionModel` folder plus a `llava.projector` file
  (`model.mm_projector.{0,2}.{weight,bias}`, what llava_surgery.py writes), then
  `tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py --clip-model-is-vision --llava-projector llava.projector
  --projector-type mlp` with the CLIP mean/std. That converter drops the last encoder layer (no feature layer in the
  config) and writes `clip.vision.block_count` 2, no `clip.vision.feature_layer`, `clip.use_gelu` false,
  `clip.has_llava_projector` true, no post_layernorm. Under transformers 5 `CLIPVisionModel` no longer has the
  `vision_model` wrapper the script uses; the generator runs it with a small class restoring that layout.
  Tensor names: `v.class_embd`, `v.patch_embd.weight`, `v.position_embd.weight`, `v.pre_ln.{weight,bias}`,
  `v.blk.N.{attn_q,attn_k,attn_v,attn_out,ln1,ln2,ffn_down,ffn_up}.{weight,bias}` (`ffn_down` is CLIP's fc1,
  `ffn_up` its fc2), `mm.{0,2}.{weight,bias}`.
- `tiny-llava-mmproj-q8_0.gguf`: the mmproj rewritten with gguf-py with every linear weight of the tower and the
  projector (`attn_*`, `ffn_*`, `mm.*` weights) quantized to Q8_0 (`gguf.quants.quantize`), the patch and position
  embeddings kept f16, as `convert_hf_to_gguf.py --mmproj --outtype q8_0` stores mmproj files. Its goldens
  (`q8_0_projector_output` per case) come from the reference model with those weights replaced by their Q8_0
  round trip (`gguf.quants.dequantize`).
- `hostile/`: the mmproj rewritten with gguf-py with one defect each: `huge-image-size.gguf`
  (`clip.vision.image_size` 2^30), `missing-tensor.gguf` (no `v.blk.1.attn_q.weight`), `llava16.gguf`
  (`clip.vision.image_grid_pinpoints` and `clip.vision.mm_patch_merge_type` spatial_unpad: a LLaVA-1.6 header
  without the `model.image_newline` tensor).
- `images/`: `landscape.png` 48x24, `portrait.png` 20x40, `square.png` 30x30, RGB uniform noise.

## golden.json / golden.f32

Same conventions as data/llava: `golden.f32` is raw little-endian float32, referenced as `{"offset", "shape"}`.
Per case (one per image): `messages` (the user turn), `prompt` (LLaVA-1.5's conv_vicuna_v1 text for it: the
system sentence, ` USER: <image>\n{question} ASSISTANT:`), `prompt_ids` (the
prompt tokenized by llama.cpp (llama-cpp-python, `special=True`, BOS added) with the text GGUF's vocabulary: the tiny
BPE tokenizer.json becomes a score-less SPM vocabulary there, so one prompt tokenizes differently from
tokenizer.json, whose ids are `hf_prompt_ids`; the goldens use `prompt_ids`, what a user of the pair feeds the model),
`input_ids` (`<image>` expanded to 16), `pixel_values` [1, 3, 32, 32] (CLIPImageProcessorPil: shortest edge 32,
bicubic, center crop 32, CLIP mean/std), `vision_features` [1, 16, 32] (hidden_states[-2] of the 3-layer tower,
CLS dropped), `projector_output` [1, 16, 32], `last_logits` (701), `top5_ids`, `greedy_ids` (16, eos disabled) and
`greedy_min_margin` (smallest top-1 minus top-2 logit over the greedy steps).
"""


def generate(out_dir):
    ensure_llama_cpp()
    for child in ["images", "hostile", "q8_0", TEXT_FILE, MMPROJ_FILE, Q8_0_FILE]:
        p = out_dir / child
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    images = make_images(out_dir / "images")
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        model, tokenizer, image_id, text_dir = build_model(tmp)
        convert_text(model, text_dir, out_dir / TEXT_FILE)
        convert_mmproj(model, tmp, out_dir / MMPROJ_FILE)
    sys.path.insert(0, str(VENDOR / "gguf-py"))
    types = check_stored(model, out_dir / TEXT_FILE, out_dir / MMPROJ_FILE)
    write_hostile(out_dir / MMPROJ_FILE, out_dir / "hostile")
    q8_model = q8_0_variant(out_dir / MMPROJ_FILE, out_dir, model)
    processor = gen_llava.clip_processor(IMAGE_SIZE)
    tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    arrays = gen_llava.Arrays()
    import llama_cpp
    vocab = llama_cpp.Llama(str(out_dir / TEXT_FILE), vocab_only=True, verbose=False)
    cases = []
    for name in IMAGES:
        messages = gen_llava.hf_messages([name], QUESTIONS[name])
        # LLaVA-1.5's conv_vicuna_v1 prompt (its system sentence, then USER/ASSISTANT), as LLaVA and
        # llama.cpp's LLaVA examples write it and vlmsh's llava-v1 template renders one user turn.
        prompt = f"{gen_llava.VICUNA_SYSTEM} USER: <image>\n{QUESTIONS[name]} ASSISTANT:"
        # The ids the text GGUF's own vocabulary gives (llama.cpp's tokenizer): what a user of the pair
        # feeds the model. The tiny BPE tokenizer.json becomes a score-less SPM vocabulary in the GGUF, so
        # these can differ from tokenizer.json's ids (hf_prompt_ids).
        hf_prompt_ids = tokenizer(prompt).input_ids
        prompt_ids = vocab.tokenize(prompt.encode(), add_bos=True, special=True)
        input_ids = gen_llava.expand(prompt_ids, image_id, tokens)
        pixel_values = processor([images[name]], return_tensors="pt")["pixel_values"]
        case = {"image": name, "messages": messages, "prompt": prompt, "prompt_ids": prompt_ids,
                "hf_prompt_ids": hf_prompt_ids, "input_ids": input_ids}
        case.update(run_case(model, arrays, pixel_values, input_ids))
        with torch.no_grad():
            features = q8_model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
            case["q8_0_projector_output"] = arrays.add(q8_model.model.multi_modal_projector(features))
        cases.append(case)
    golden = {"arrays": {"file": "golden.f32", "dtype": "float32", "byte_order": "little", "offset_unit": "bytes"},
              "text": TEXT_FILE, "mmproj": MMPROJ_FILE, "mmproj_q8_0": Q8_0_FILE, "new_tokens": NEW_TOKENS, "image_token_id": image_id,
              "image_tokens_per_image": tokens, "mmproj_tensor_types": types,
              "images": {n: {"size": list(images[n].size)} for n in IMAGES}, "cases": cases}
    arrays.write(out_dir / "golden.f32")
    (out_dir / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    (out_dir / "README.md").write_text(README)
