"""`vlmsh export-gguf` against llama.cpp itself, and Q8_0 / F16 encoder goldens from gguf-py.

Runs the built release binary (.build/release/vlmsh) on the shipped demo VLM (models/vlmsh-demo:
SmolLM2 from the store as its text_model, its own LoRA, a 4-layer CLIP tower at 96 px with 16 px
patches whose class token is an image row too (`full`), the mlp2x_gelu projector): `export-gguf --type T` for T in f16 and q8_0, then for each
96x96 image `vlmsh generate` on the un-exported model (prompt ids and 12 greedy tokens) and
llama.cpp (llama-cpp-python 0.3.36 with its libmtmd) on the exported text.gguf + mmproj.gguf:
the image rows mtmd encodes, and 12 greedy tokens decoded around them with the same prompt ids.
Also llama.cpp's decoder fed the reference image rows (transformers' CLIP + projector on the demo's
own Float32 weights, what vlmsh computes) and a torch emulation of llama.cpp's LLaVA graph (class
token after the patches, rows 1.. kept, tanh gelu in the projector) to explain the difference.

Outputs (data/export_gguf/):
  images/*.png          the three 96x96 shapes images (copies of sessions/data/shapes)
  golden.json           per type and image: prompt_ids, vlmsh_ids, llama_cpp_ids,
                        llama_cpp_ids_with_reference_embeddings, embedding differences
  q8_input.f32          float32 [ROWS, 256] encoder input (random rows plus edge cases)
  q8_0.bin / f16.bin    gguf-py's quants.quantize of it

The SigLIP case (siglip.json): a tower llama.cpp computes as vlmsh does. `vlmsh init-llava
--vision-kind siglip --projector-act gelu_pytorch_tanh` around smollm2 (a 2-layer SigLIP ViT at 96 px
with 16 px patches, 36 image rows), fine-tuned 6 steps with `finetune --mode vision+lora+projector`
on siglip_data.json (the three images), then exported (f16, q8_0) and run in llama.cpp as above.
vlmsh's fine-tune is deterministic, so the test re-creates the model from the recorded arguments.
  siglip_data.json      the three training rows (images/ relative)
  siglip.json           init_args, finetune_args; per type and image: prompt_ids, vlmsh_ids (the
                        fine-tuned model before export), llama_cpp_ids (mtmd's rows decoded),
                        embeddings_max_abs_diff (mtmd's rows against transformers' SiglipVisionModel +
                        the tanh-gelu projector on the fine-tuned Float32 weights, vlmsh's numbers)
Needs the models installed (make model) and a release build.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize
from PIL import Image
from safetensors.numpy import load_file

import llama_cpp
from llama_cpp import mtmd_cpp as mtmd

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = ROOT / ".build/release/vlmsh"
DEMO = ROOT / "models/vlmsh-demo"
IMAGES = ["two.png", "three.png", "four.png"]
PROMPT = "Describe the image."
NEW_TOKENS = 12

# Driving llama.cpp (decode, greedy tokens, libmtmd image rows) is bench/llama_cpp_mmproj.py's.
sys.path.insert(0, str(ROOT / "bench"))
from llama_cpp_mmproj import encode_image, greedy as greedy_steps  # noqa: E402


def greedy(llm, prompt_ids, image_id, rows):
    return greedy_steps(llm, prompt_ids, image_id, rows, NEW_TOKENS)[0]


def q8_goldens(out):
    rng = np.random.default_rng(2026)
    rows = [rng.standard_normal(256) * s for s in (0.02, 1.0, 300.0)]
    edge = np.zeros(256, np.float32)                       # an all-zero block (d = 0)
    edge[32:64] = np.arange(32) - 15.5                     # halves that round away from zero
    edge[64:96] = (np.arange(32) % 5 - 2) * 127 / 2.0      # exact ties at ±0.5 after scaling
    edge[96:128] = 1e-8 * rng.standard_normal(32)          # tiny values
    edge[128:160] = -rng.uniform(0, 1, 32)                 # all negative
    edge[160:192] = 65504 * rng.uniform(-1, 1, 32)         # near the f16 range
    edge[192:224] = 1.0                                    # constant block
    edge[224:256] = rng.standard_normal(32)
    x = np.stack(rows + [edge]).astype(np.float32)
    x.tofile(out / "q8_input.f32")
    quantize(x, T.Q8_0).tofile(out / "q8_0.bin")
    quantize(x, T.F16).tofile(out / "f16.bin")
    return {"rows": int(x.shape[0]), "cols": int(x.shape[1])}


def vlmsh(*args):
    res = subprocess.run([str(BIN), *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"[export_gguf] vlmsh {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


class Reference:
    """The demo's tower and projector from its own Float32 weights, as transformers runs LLaVA
    (vlmsh's numbers), plus llama.cpp's LLaVA graph emulated on the same weights."""

    def __init__(self):
        from transformers import CLIPVisionConfig, CLIPVisionModel
        config = json.loads((DEMO / "config.json").read_text())
        v = config["vision_config"]
        self.layer = config["vision_feature_layer"]
        # `full` keeps the class token's row, `default` drops it (as transformers' LLaVA does).
        self.first_row = 0 if config.get("vision_feature_select_strategy") == "full" else 1
        self.tower = CLIPVisionModel(CLIPVisionConfig(**{k: v[k] for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
            "hidden_act", "layer_norm_eps")})).eval()
        w = {k: torch.tensor(a) for k, a in load_file(DEMO / "model.safetensors").items()}
        prefix = "vision_tower.vision_model."
        self.tower.load_state_dict({k[len(prefix):]: t for k, t in w.items() if k.startswith(prefix)}, strict=True)
        self.mm = {k.split("multi_modal_projector.")[1]: t for k, t in w.items() if "multi_modal_projector." in k}
        processor = json.loads((DEMO / "preprocessor_config.json").read_text())
        self.mean, self.std = np.array(processor["image_mean"]), np.array(processor["image_std"])

    def pixels(self, path):
        # 96x96 images at the tower's size: resize and crop leave them as they are.
        x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        return torch.tensor(((x - self.mean) / self.std).transpose(2, 0, 1)[None], dtype=torch.float32)

    def project(self, x, tanh=False):
        h = torch.nn.functional.gelu(x @ self.mm["linear_1.weight"].T + self.mm["linear_1.bias"], approximate="tanh" if tanh else "none")
        return h @ self.mm["linear_2.weight"].T + self.mm["linear_2.bias"]

    @torch.no_grad()
    def vlmsh(self, path):
        states = self.tower(self.pixels(path), output_hidden_states=True).hidden_states
        return self.project(states[self.layer][0, self.first_row:]).numpy()

    @torch.no_grad()
    def llama_cpp_graph(self, path):
        vm = getattr(self.tower, "vision_model", self.tower)
        e = vm.embeddings
        patches = e.patch_embedding(self.pixels(path)).flatten(2).transpose(1, 2)
        x = torch.cat([patches, e.class_embedding.view(1, 1, -1)], 1) + e.position_embedding.weight[None]
        x = vm.pre_layrnorm(x)
        n = len(vm.encoder.layers) + 1 + self.layer if self.layer < 0 else self.layer
        for layer in vm.encoder.layers[:n]:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return self.project(x[0, 1:], tanh=True).numpy()


SIGLIP_INIT = ["--text-model", "smollm2", "--vision-kind", "siglip", "--projector-act", "gelu_pytorch_tanh",
               "--vision-hidden", "64", "--vision-layers", "2", "--vision-heads", "2", "--vision-intermediate", "256",
               "--image-size", "96", "--patch-size", "16", "--seed", "7"]
SIGLIP_FINETUNE = ["--mode", "vision+lora+projector", "--lora-r", "2", "--lora-targets", "q_proj,v_proj", "--steps", "6",
                   "--lr", "1e-3", "--seed", "7"]
SIGLIP_ANSWERS = {"two.png": "two", "three.png": "three", "four.png": "four"}


class SiglipReference:
    """transformers' SiglipVisionModel (hidden state -1, every row) and the gelu_pytorch_tanh
    projector on the fine-tuned Float32 weights: what vlmsh computes for the SigLIP LLaVA."""

    def __init__(self, model, adapter):
        from transformers import SiglipVisionConfig, SiglipVisionModel
        v = json.loads((model / "config.json").read_text())["vision_config"]
        self.tower = SiglipVisionModel(SiglipVisionConfig(vision_use_head=False, **{k: v[k] for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
            "hidden_act", "layer_norm_eps")})).eval()
        prefix = "vision_tower.vision_model."
        w = {k[len(prefix):]: torch.tensor(a) for k, a in load_file(adapter / "vision_tower.safetensors").items()}
        getattr(self.tower, "vision_model", self.tower).load_state_dict(w, strict=True)
        self.mm = {k.split("multi_modal_projector.")[1]: torch.tensor(a)
                   for k, a in load_file(adapter / "multi_modal_projector.safetensors").items()}
        processor = json.loads((model / "preprocessor_config.json").read_text())
        self.mean, self.std = np.array(processor["image_mean"]), np.array(processor["image_std"])

    @torch.no_grad()
    def rows(self, path):
        x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        pixels = torch.tensor(((x - self.mean) / self.std).transpose(2, 0, 1)[None], dtype=torch.float32)
        h = self.tower(pixels, output_hidden_states=True).hidden_states[-1][0]
        h = torch.nn.functional.gelu(h @ self.mm["linear_1.weight"].T + self.mm["linear_1.bias"], approximate="tanh")
        return (h @ self.mm["linear_2.weight"].T + self.mm["linear_2.bias"]).numpy()


def open_llama(folder):
    llm = llama_cpp.Llama(str(folder / "text.gguf"), n_ctx=512, n_batch=512, n_threads=2, verbose=False)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = False
    params.print_timings = False
    params.n_threads = 2
    params.warmup = False
    mctx = mtmd.mtmd_init_from_file(str(folder / "mmproj.gguf").encode(), llm._model.model, params)
    assert mctx, "mtmd_init_from_file failed on the exported mmproj"
    return llm, mctx


def llama_cpp_cases(folder, out, unexported, image_id, label, compare):
    """The exported pair in `folder` through llama.cpp, per image: its image rows and greedy ids beside
    vlmsh's (`unexported`), then what `compare(path, rows, decode)` adds (`decode(rows)`: llama.cpp's
    greedy ids from other image rows)."""
    llm, mctx = open_llama(folder)
    cases = []
    for name in IMAGES:
        path = out / "images" / name
        rows = encode_image(mctx, llm.n_embd(), path)
        prompt_ids = unexported[name]["prompt_ids"]
        case = {"image": name, "prompt_ids": prompt_ids, "vlmsh_ids": unexported[name]["ids"],
                "llama_cpp_image_rows": int(rows.shape[0]),
                "llama_cpp_ids": greedy(llm, prompt_ids, image_id, rows)}
        case.update(compare(path, rows, lambda other: greedy(llm, prompt_ids, image_id, other)))
        cases.append(case)
        print(f"[export_gguf] {label} {name}: {json.dumps({k: v for k, v in case.items() if k != 'prompt_ids'})}", flush=True)
    mtmd.mtmd_free(mctx)
    del llm
    return cases


def siglip(out):
    rows = [{"id": str(i), "image": "images/" + name, "conversations": [
        {"from": "human", "value": "<image>\nHow many shapes are there?"},
        {"from": "gpt", "value": f"There are {SIGLIP_ANSWERS[name]} shapes."}]} for i, name in enumerate(IMAGES)]
    (out / "siglip_data.json").write_text(json.dumps(rows, indent=1) + "\n")
    golden = {"init_args": SIGLIP_INIT, "finetune_args": SIGLIP_FINETUNE, "prompt": PROMPT, "new_tokens": NEW_TOKENS,
              "images": IMAGES, "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        model, adapter = tmp / "model", tmp / "adapter"
        vlmsh("init-llava", "--out", str(model), *SIGLIP_INIT)
        vlmsh("finetune", "--model", str(model), "--data", str(out / "siglip_data.json"), "--image-folder", str(out),
              "--out", str(adapter), *SIGLIP_FINETUNE)
        reference = SiglipReference(model, adapter)
        image_id = json.loads((model / "config.json").read_text())["image_token_index"]
        unexported = {name: json.loads(vlmsh(
            "generate", "--model", str(model), "--adapter", str(adapter), "--image", str(out / "images" / name),
            "--prompt", PROMPT, "--max-tokens", str(NEW_TOKENS), "--temperature", "0", "--json")) for name in IMAGES}
        for qtype in ("f16", "q8_0"):
            folder = tmp / qtype
            report = json.loads(vlmsh("export-gguf", "--model", str(model), "--adapter", str(adapter), "--type", qtype,
                                      "--out", str(folder), "--json"))
            def compare(path, rows, decode):
                ref = reference.rows(path)
                return {"embeddings_max_abs_diff": float(np.abs(rows - ref).max()),
                        "reference_max_abs_value": float(np.abs(ref).max())}
            cases = llama_cpp_cases(folder, out, unexported, image_id, f"siglip {qtype}", compare)
            golden["types"][qtype] = {"merged_weights": report["merged_weights"], "vision_layers": report["vision_layers"],
                                      "cases": cases}
    (out / "siglip.json").write_text(json.dumps(golden, indent=1) + "\n")


def generate(out):
    assert BIN.exists(), f"{BIN} missing: swift build -c release first"
    quant = q8_goldens(out)
    (out / "images").mkdir(exist_ok=True)
    for name in IMAGES:
        shutil.copyfile(ROOT / "sessions/data/shapes" / name, out / "images" / name)
    siglip(out)
    reference = Reference()
    golden = {"model": "vlmsh-demo", "prompt": PROMPT, "new_tokens": NEW_TOKENS, "images": IMAGES, "quant": quant, "types": {}}
    unexported = {}
    for name in IMAGES:
        r = json.loads(vlmsh("generate", "--model", str(DEMO), "--image", str(out / "images" / name), "--prompt", PROMPT,
                             "--max-tokens", str(NEW_TOKENS), "--temperature", "0", "--json"))
        unexported[name] = r
    image_id = json.loads((DEMO / "config.json").read_text())["image_token_index"]
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in ("f16", "q8_0"):
            folder = pathlib.Path(tmp) / qtype
            vlmsh("export-gguf", "--model", str(DEMO), "--type", qtype, "--out", str(folder))
            def compare(path, rows, decode):
                ref = reference.vlmsh(path)
                emulated = reference.llama_cpp_graph(path)
                diff = np.abs(rows - ref) if rows.shape == ref.shape else None
                return {
                    "llama_cpp_ids_with_reference_embeddings": decode(ref),
                    "embeddings_max_abs_diff": float(diff.max()) if diff is not None else None,
                    "embeddings_max_rel_diff": float(diff.max() / np.abs(ref).max()) if diff is not None else None,
                    "reference_max_abs_value": float(np.abs(ref).max()),
                    "llama_cpp_vs_emulated_graph_max_abs_diff": float(np.abs(rows - emulated).max()),
                }
            cases = llama_cpp_cases(folder, out, unexported, image_id, qtype, compare)
            golden["types"][qtype] = {"cases": cases}
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
