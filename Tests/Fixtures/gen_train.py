"""Training goldens for vlmsh's LoRA / projector fine-tuning, from PyTorch + PEFT on data/llava/clip-llama.

Writes under data/train/ (see the README written there): examples.jsonl (pre-tokenized rows), pixel_values.safetensors,
lora-init/ (a PEFT adapter with non-zero lora_B), golden.json (losses, norms, learning rates, AdamW trajectories) and
per-case safetensors files with gradients and the trainable weights after the last step.
The base checkpoint is referenced (../llava/clip-llama), never copied.
"""
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoImageProcessor, LlavaForConditionalGeneration, TrainingArguments, get_scheduler  # noqa: E402
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS  # noqa: E402
from transformers.trainer_pt_utils import get_parameter_names  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
BASE_REL = "../llava/clip-llama"          # relative to data/train/
IMAGES_REL = "../llava/images"
IMAGE_TOKEN_ID = 700
IMAGE_SEQ = 16
IGNORE = -100
BOS = 1
STEPS = 3
BETAS = (0.9, 0.999)
EPS = 1e-8
LORA_TARGET = (r"model\.language_model\.layers\.\d+\."
               r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")
PROJECTOR = "multi_modal_projector"        # LLaVA's "mm_projector"
TOWER = "vision_tower"


# ------------------------------------------------------------------------------------------------ examples

def make_examples():
    """A: image + 20 text tokens, labels on the last 8. B: image + 30 text tokens, two labelled assistant spans.
    B-text: B's text tokens without the image."""
    rng = np.random.default_rng(4242)

    def toks(n):
        return [int(x) for x in rng.integers(3, 700, n)]   # 3..699: no unk/bos/eos inside the text

    a_user, a_asst = toks(11), toks(8)
    a_ids = [BOS, IMAGE_TOKEN_ID] + a_user + a_asst
    a_labels = [IGNORE] * (2 + len(a_user)) + a_asst
    b_user1, b_asst1, b_user2, b_asst2 = toks(8), toks(6), toks(7), toks(8)
    b_ids = [BOS, IMAGE_TOKEN_ID] + b_user1 + b_asst1 + b_user2 + b_asst2
    b_labels = [IGNORE] * (2 + len(b_user1)) + b_asst1 + [IGNORE] * len(b_user2) + b_asst2
    c_ids = [BOS] + b_user1 + b_asst1 + b_user2 + b_asst2
    c_labels = [IGNORE] * (1 + len(b_user1)) + b_asst1 + [IGNORE] * len(b_user2) + b_asst2
    return [
        {"name": "A", "input_ids": a_ids, "labels": a_labels, "image": f"{IMAGES_REL}/square.png"},
        {"name": "B", "input_ids": b_ids, "labels": b_labels, "image": f"{IMAGES_REL}/wide.png"},
        {"name": "B-text", "input_ids": c_ids, "labels": c_labels, "image": None},
    ]


def expand(ids, labels):
    out_ids, out_labels = [], []
    for i, l in zip(ids, labels):
        if i == IMAGE_TOKEN_ID:
            out_ids += [IMAGE_TOKEN_ID] * IMAGE_SEQ
            out_labels += [IGNORE] * IMAGE_SEQ
        else:
            out_ids.append(i)
            out_labels.append(l)
    return out_ids, out_labels


class Batch:
    """Expanded, right-padded rows (pad id 0, label -100, mask 0) and the pixel values of their images in order."""

    def __init__(self, examples, pixels):
        rows = [expand(e["input_ids"], e["labels"]) for e in examples]
        width = max(len(r[0]) for r in rows)
        self.ids = torch.tensor([r[0] + [0] * (width - len(r[0])) for r in rows])
        self.labels = torch.tensor([r[1] + [IGNORE] * (width - len(r[1])) for r in rows])
        self.mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows])
        imgs = [pixels[pathlib.Path(e["image"]).name] for e in examples if e["image"]]
        self.pixel_values = torch.cat(imgs) if imgs else None
        self.count = int((self.labels[:, 1:] != IGNORE).sum())


def sum_ce(model, batch):
    """sum over i of CE(logits[i], labels[i+1]) where labels[i+1] != -100, and the number of such positions."""
    logits = model(input_ids=batch.ids, pixel_values=batch.pixel_values, attention_mask=batch.mask).logits
    logits, targets = logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1)
    keep = targets != IGNORE
    return F.cross_entropy(logits[keep], targets[keep], reduction="sum"), int(keep.sum())


# ------------------------------------------------------------------------------------------------ models

def load_base(base_dir):
    return LlavaForConditionalGeneration.from_pretrained(str(base_dir), dtype=torch.float32).eval()


def lora_model(base_dir, adapter_dir):
    return PeftModel.from_pretrained(load_base(base_dir), str(adapter_dir), is_trainable=True).eval()


def peft_key(name):
    """named_parameters name -> the key PEFT writes in adapter_model.safetensors (adapter name dropped)."""
    return name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def hub_key(name):
    """Projector parameter name -> the llava-hf checkpoint key (multi_modal_projector.linear_N.*)."""
    return name[name.index(PROJECTOR):]


def key_for(name):
    if TOWER in name:
        # transformers 5 names the tower's parameters without vision_model.; llava-hf checkpoints have it
        rest = name[name.index(TOWER) + len(TOWER) + 1:]
        return TOWER + ".vision_model." + rest.removeprefix("vision_model.")
    return hub_key(name) if PROJECTOR in name else peft_key(name)


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def make_lora_init(base_dir, folder):
    torch.manual_seed(7)
    base = load_base(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=LORA_TARGET,
                        task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(str(folder))
    (folder / "README.md").unlink(missing_ok=True)   # PEFT's model card template
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "../" + BASE_REL  # relative to the adapter folder, not an absolute path
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        shapes = {k: list(f.get_slice(k).get_shape()) for k in keys}
    names = [peft_key(n) for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(keys), "PEFT save names differ from the trainable parameters"
    return keys, shapes, cfg


def grads_of(model):
    """Step-1 gradients; parameters the loss never reaches (tower layers past the feature layer,
    its post-norm) have none and are left out."""
    return {key_for(n): p.grad.detach().clone() for n, p in trainable(model) if p.grad is not None}


def params_of(model):
    return {key_for(n): p.detach().clone() for n, p in trainable(model)}


def save_tensors(path, tensors):
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------ cases

def run_steps(model, optimizer, batch, clip=None):
    """STEPS x {loss = sumCE/N; backward; [clip]; step; zero_grad}; returns losses, pre-clip norms, step-1 grads."""
    params = [p for _, p in trainable(model)]
    losses, norms, first = [], [], None
    for step in range(STEPS):
        total, n = sum_ce(model, batch)
        loss = total / n
        losses.append(loss.item())
        loss.backward()
        if step == 0:
            first = grads_of(model)
        if clip is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm=clip).item())
        optimizer.step()
        optimizer.zero_grad()
    return losses, norms, first


def llava_param_groups(model, lr, projector_lr, weight_decay):
    """LLaVATrainer.create_optimizer with mm_projector_lr set ("mm_projector" is "multi_modal_projector" here)."""
    decay = [n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n]
    projector = [n for n, _ in model.named_parameters() if PROJECTOR in n]
    named = list(model.named_parameters())
    specs = [(True, False, {"weight_decay": weight_decay}), (False, False, {"weight_decay": 0.0}),
             (True, True, {"weight_decay": weight_decay, "lr": projector_lr}),
             (False, True, {"weight_decay": 0.0, "lr": projector_lr})]
    groups, described = [], []
    for is_decay, is_proj, extra in specs:
        members = [(n, p) for n, p in named if (n in decay) == is_decay and (n in projector) == is_proj
                   and p.requires_grad]
        if not members:   # LLaVA passes empty groups too; they hold nothing to update
            continue
        groups.append({"params": [p for _, p in members], **extra})
        described.append({"lr": extra.get("lr", lr), "weight_decay": extra["weight_decay"],
                          "params": [key_for(n) for n, _ in members]})
    return groups, described


def adamw(params, lr, weight_decay):
    return torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=EPS, weight_decay=weight_decay)


def case_lora(base_dir, adapter_dir, batch, out):
    model = lora_model(base_dir, adapter_dir)
    opt = adamw([p for _, p in trainable(model)], 1e-2, 0.0)
    losses, _, grads = run_steps(model, opt, batch)
    save_tensors(out / "grads-lora.safetensors", grads)
    save_tensors(out / "final-lora.safetensors", params_of(model))
    return {"start": "lora-init", "example": "A", "lr": 1e-2, "weight_decay": 0.0, "scheduler": "constant",
            "clip": None, "losses": losses, "grads_file": "grads-lora.safetensors",
            "final_file": "final-lora.safetensors"}


def case_projector(base_dir, batch, out):
    model = load_base(base_dir)
    for n, p in model.named_parameters():
        p.requires_grad_(PROJECTOR in n)
    opt = adamw([p for _, p in trainable(model)], 1e-2, 0.0)
    losses, _, grads = run_steps(model, opt, batch)
    save_tensors(out / "grads-projector.safetensors", grads)
    save_tensors(out / "final-projector.safetensors", params_of(model))
    return {"start": "base", "example": "A", "trainable": sorted(grads), "lr": 1e-2, "weight_decay": 0.0,
            "scheduler": "constant", "clip": None, "losses": losses, "grads_file": "grads-projector.safetensors",
            "final_file": "final-projector.safetensors"}


def case_vision_projector(base_dir, batch, out):
    """LLaVA-NeXT's mm_tunable_parts=mm_vision_tower,mm_mlp_adapter: the whole tower and the projector train."""
    model = load_base(base_dir)
    for n, p in model.named_parameters():
        p.requires_grad_(PROJECTOR in n or TOWER in n)
    opt = adamw([p for _, p in trainable(model)], 1e-2, 0.0)
    losses, _, grads = run_steps(model, opt, batch)
    save_tensors(out / "grads-vision+projector.safetensors", grads)
    final = {k: v for k, v in params_of(model).items() if k in grads}
    save_tensors(out / "final-vision+projector.safetensors", final)
    return {"start": "base", "example": "A", "trainable": sorted(grads), "lr": 1e-2, "weight_decay": 0.0,
            "scheduler": "constant", "clip": None, "losses": losses, "grads_file": "grads-vision+projector.safetensors",
            "final_file": "final-vision+projector.safetensors"}


def case_lora_projector(base_dir, adapter_dir, batch, out):
    model = lora_model(base_dir, adapter_dir)
    for n, p in model.named_parameters():
        if PROJECTOR in n:
            p.requires_grad_(True)
    groups, described = llava_param_groups(model, 1e-2, 2e-2, 0.1)
    opt = adamw(groups, 1e-2, 0.1)
    losses, _, grads = run_steps(model, opt, batch)
    save_tensors(out / "grads-lora+projector.safetensors", grads)
    save_tensors(out / "final-lora+projector.safetensors", params_of(model))
    return {"start": "lora-init", "example": "A", "lr": 1e-2, "mm_projector_lr": 2e-2, "weight_decay": 0.1,
            "scheduler": "constant", "clip": None, "param_groups": described, "losses": losses,
            "grads_file": "grads-lora+projector.safetensors", "final_file": "final-lora+projector.safetensors"}


def case_lora_clip(base_dir, adapter_dir, batch, out):
    model = lora_model(base_dir, adapter_dir)
    opt = adamw([p for _, p in trainable(model)], 1e-2, 0.0)
    losses, norms, _ = run_steps(model, opt, batch, clip=0.05)
    assert all(n > 0.05 for n in norms), norms
    save_tensors(out / "final-lora-clip.safetensors", params_of(model))
    return {"start": "lora-init", "example": "A", "lr": 1e-2, "weight_decay": 0.0, "scheduler": "constant",
            "clip": 0.05, "losses": losses, "grad_norms": norms,
            "clip_rule": "torch.nn.utils.clip_grad_norm_: total L2 norm over all trainable grads; if norm > max_norm "
                         "every grad is multiplied by max_norm / (norm + 1e-6)",
            "final_file": "final-lora-clip.safetensors"}


def case_grad_accum(base_dir, adapter_dir, first, second, pixels, name, out):
    """Accumulate over `first` then `second` (batch 1 each), loss normalised by the step's total label count."""
    model = lora_model(base_dir, adapter_dir)
    opt = adamw([p for _, p in trainable(model)], 1e-2, 0.0)
    micro = [Batch([first], pixels), Batch([second], pixels)]
    total_n = sum(b.count for b in micro)
    losses, grads, parts = [], None, None
    for step in range(2):
        step_loss, sums = torch.zeros(()), []
        for b in micro:
            total, n = sum_ce(model, b)
            (total / total_n).backward()
            step_loss = step_loss + (total / total_n).detach()
            sums.append(total.item())
        losses.append(step_loss.item())
        if step == 0:
            grads, parts = grads_of(model), sums
        opt.step()
        opt.zero_grad()

    # The same step-1 loss and gradients from one right-padded batch of both rows.
    fresh = lora_model(base_dir, adapter_dir)
    padded = Batch([first, second], pixels)
    assert padded.count == total_n
    total, n = sum_ce(fresh, padded)
    (total / n).backward()
    padded_loss = (total / n).item()
    padded_grads = grads_of(fresh)
    grad_diff = max((padded_grads[k] - grads[k]).abs().max().item() for k in grads)
    assert abs(padded_loss - losses[0]) < 1e-5 and grad_diff < 1e-6, (padded_loss, losses[0], grad_diff)
    save_tensors(out / f"grads-{name}.safetensors", grads)
    return {"start": "lora-init", "examples": [first["name"], second["name"]], "micro_batch_size": 1,
            "gradient_accumulation_steps": 2, "lr": 1e-2, "weight_decay": 0.0, "scheduler": "constant",
            "clip": None, "label_counts": [b.count for b in micro], "sum_ce": parts, "loss": losses[0],
            "losses": losses, "padded_batch": {"pad_id": 0, "length": int(padded.ids.shape[1]),
                                               "loss": padded_loss, "max_abs_grad_diff": grad_diff},
            "grads_file": f"grads-{name}.safetensors"}


def case_schedules():
    out = {"base_lr": 1e-3, "num_warmup_steps": 3, "num_training_steps": 10, "lrs": {}}
    for kind in ["constant", "constant_with_warmup", "linear", "cosine"]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = adamw([p], 1e-3, 0.0)
        sched = get_scheduler(kind, opt, num_warmup_steps=3, num_training_steps=10)
        lrs = []
        for _ in range(10):
            lrs.append(opt.param_groups[0]["lr"])
            p.grad = torch.zeros(1)
            opt.step()
            sched.step()
        out["lrs"][kind] = lrs
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, warmup_steps=0.15, report_to="none")
        warm = args.get_warmup_steps(10)
    assert warm == math.ceil(10 * 0.15)
    out["warmup_ratio"] = {"ratio": 0.15, "num_training_steps": 10, "warmup_steps": warm,
                           "rule": "ceil(num_training_steps * ratio) (TrainingArguments.get_warmup_steps; "
                                   "transformers 5 takes the ratio as warmup_steps < 1, 4.x as warmup_ratio)"}
    return out


def case_adamw():
    gen = torch.Generator().manual_seed(99)
    p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 0.25, 2.0, -0.75, 0.0]))
    initial = p.detach().clone().tolist()
    opt = adamw([p], 1e-3, 0.1)
    grads, after = [], []
    for step in range(4):
        g = torch.randn(6, generator=gen)
        g[5] = 0.0 if step == 1 else g[5]   # one zero gradient entry
        grads.append(g.tolist())
        p.grad = g.clone()
        opt.step()
        after.append(p.detach().clone().tolist())
    return {"lr": 1e-3, "weight_decay": 0.1, "betas": list(BETAS), "eps": EPS, "initial": initial,
            "grads": grads, "params_after_step": after,
            "rule": "torch.optim.AdamW: p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; "
                    "p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)"}


# ------------------------------------------------------------------------------------------------ driver

def check_peft_load(base_dir, adapter_dir, ids_json, strict):
    flags = ["--strict-names"] if strict else []
    proc = subprocess.run([sys.executable, str(HERE / "check_peft_load.py"), *flags, str(base_dir), str(adapter_dir),
                           str(ids_json)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"check_peft_load.py failed on {adapter_dir}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


README = """# data/train

Goldens for vlmsh's trainer (LoRA / projector fine-tuning, following the original LLaVA trainer), computed with
PyTorch + PEFT by `Tests/Fixtures/gen_train.py` (`generate.py train`); versions in VERSION.json. The base model is
the committed `../llava/clip-llama` (tiny LlavaForConditionalGeneration, float32; not copied). All float32, CPU,
seeded; regenerating gives byte-identical files.

| file | what |
| --- | --- |
| `examples.jsonl` | pre-tokenized rows `{"name", "input_ids", "labels", "image"}`; `input_ids` hold the image token 700 once (the model input repeats it 16 times, labels -100 there); `image` is relative to this folder or null. A: square.png, 20 text tokens, labels on the last 8. B: wide.png, 30 text tokens, two labelled assistant spans (6 + 8). B-text: B without the image (29 tokens). |
| `pixel_values.safetensors` | `square.png`, `wide.png`: [1, 3, 32, 32] float32 from clip-llama's preprocessor_config.json (`AutoImageProcessor`, PIL backend) |
| `check_input.json` | example A expanded (input_ids as the model sees them) + pixel values reference: the input of `check_peft_load.py` |
| `lora-init/` | PEFT adapter (`adapter_config.json`, `adapter_model.safetensors`): r 4, alpha 8 (scale 2), dropout 0, LLaMA q/k/v/o/gate/up/down of both layers; lora_A = PEFT's kaiming init, lora_B = randn*0.05 (non-zero, so both get gradients). `base_model_name_or_path` is rewritten to `../../llava/clip-llama` (relative to the adapter folder). |
| `grads-<case>.safetensors` | step-1 gradients: LoRA under the PEFT file keys, projector under `multi_modal_projector.linear_{1,2}.{weight,bias}`, vision tower under `vision_tower.vision_model.*` (only tensors the loss reaches: the feature layer is -2, so the last layer and the post-norm have none) |
| `final-<case>.safetensors` | the trainable weights after the case's last optimizer step (same key names) |
| `golden.json` | everything else (schema below) |
| `vlmsh-adapter/` | optional, written by the Swift side; if present, `generate.py train` loads it with PEFT and stores its logits |

## PEFT key names

`lora-init/adapter_model.safetensors` (PEFT 0.21.2 `save_pretrained`, transformers 5.24) holds 28 tensors named
`base_model.model.model.language_model.layers.{0,1}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight` and
`base_model.model.model.language_model.layers.{0,1}.mlp.{gate,up,down}_proj.lora_{A,B}.weight`: PEFT's
`base_model.model.` prefix + transformers 5's module path, adapter name (`default`) dropped. lora_A is [r, in],
lora_B [out, r]; the adapted linear computes W x + (alpha / r) * B (A x), alpha / r = 2. Adapters trained with
transformers 4.x are named `base_model.model.language_model.model.layers.*`; PEFT 0.21 with transformers 5 renames
those (and even unprefixed `model.language_model.layers.*`) on load, so they load too.

`Tests/Fixtures/check_peft_load.py [--strict-names] BASE_DIR ADAPTER_DIR IDS_JSON` loads an adapter with
`PeftModel.from_pretrained`, fails on missing / unexpected keys or a weight that is not the file's, and prints the
last-position logits of `IDS_JSON` (here `check_input.json`) plus whether the key names are PEFT's own.

## Definitions

- Loss of a batch = sum over positions i (all rows) with labels[i+1] != -100 of CE(logits[i], labels[i+1]), divided
  by N = the number of those positions. With gradient accumulation, N counts the whole accumulated step and each
  micro-batch backpropagates its sum / N (transformers' `num_items_in_batch` normalisation).
- Logits from `model(input_ids, pixel_values, attention_mask).logits` (transformers 5.24, default sdpa attention);
  the model's own loss is not used.
- Optimizer torch.optim.AdamW (betas 0.9/0.999, eps 1e-8); each case runs 3 steps of
  {loss; backward; [clip_grad_norm_]; step; zero_grad} on example A, constant lr.
- LoRA+projector param groups as LLaVATrainer.create_optimizer with mm_projector_lr: decay = parameter names
  outside nn.LayerNorm modules without "bias"; non-projector decay / no-decay groups at lr, projector decay /
  no-decay groups at mm_projector_lr (empty groups dropped). Weight decay is AdamW's decoupled p *= 1 - lr*wd.

## golden.json

```
{
 "base": "../llava/clip-llama", "image_token_id": 700, "image_seq_length": 16, "ignore_index": -100,
 "examples": {"<name>": {"expanded_length", "label_count" (N), "image"}},
 "pixel_values": {"file": "pixel_values.safetensors", "keys": {...}, "processor": str},
 "lora": {"dir": "lora-init", "config": {r, lora_alpha, scale, lora_dropout, bias, target_modules, task_type},
          "keys": [PEFT key names in file order], "shapes": {key: shape}, "key_prefix": str,
          "lora_b_init": str},
 "lora_init_logits": [701 floats],         # last position of example A, base + lora-init (check_peft_load.py)
 "base_logits": [701 floats],              # the same without the adapter
 "cases": {
  "lora":           {start, example, lr, weight_decay, scheduler, clip, losses[3], grads_file, final_file},
  "projector":      {..., trainable [keys], losses[3], grads_file, final_file},
  "vision+projector": {..., trainable [keys], losses[3], grads_file, final_file},
  "lora+projector": {..., mm_projector_lr, param_groups [{lr, weight_decay, params [keys]}], losses[3], grads_file, final_file},
  "lora-clip":      {..., clip 0.05, losses[3], grad_norms[3] (pre-clip total norms), clip_rule, final_file},
  "grad-accum":     {examples ["A","B"], micro_batch_size 1, gradient_accumulation_steps 2, label_counts [N_A, N_B],
                     sum_ce [sumCE_A, sumCE_B] (step 1), loss (step 1 = (sumCE_A+sumCE_B)/(N_A+N_B)),
                     losses [2 optimizer steps], padded_batch {pad_id, length, loss, max_abs_grad_diff}, grads_file},
  "grad-accum-text": same with examples ["A","B-text"] (one image in the padded batch),
  "schedules":      {base_lr, num_warmup_steps, num_training_steps, lrs {constant, constant_with_warmup, linear, cosine: [10]},
                     warmup_ratio {ratio, num_training_steps, warmup_steps, rule}},
  "adamw":          {lr, weight_decay, betas, eps, initial[6], grads[4][6], params_after_step[4][6], rule}},
 "vlmsh_adapter_logits": [701 floats],     # only when vlmsh-adapter/ exists: example A through PEFT + that adapter
 "vlmsh_adapter_canonical_key_names": bool # its keys are exactly the names PEFT's save_pretrained writes
}
```
`lrs[k]` is `optimizer.param_groups[0]["lr"]` before step k (transformers `get_scheduler`).
"""


def generate(out):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    base_dir = (out / BASE_REL).resolve()
    for pattern in ["grads-*.safetensors", "final-*.safetensors"]:
        for f in out.glob(pattern):
            f.unlink()
    lora_dir = out / "lora-init"
    lora_dir.mkdir(parents=True, exist_ok=True)
    for f in lora_dir.iterdir():
        f.unlink()

    examples = make_examples()
    (out / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    by_name = {e["name"]: e for e in examples}

    processor = AutoImageProcessor.from_pretrained(str(base_dir), backend="pil")
    pixels = {}
    for name in ["square.png", "wide.png"]:
        image = Image.open(out / IMAGES_REL / name)
        pixels[name] = processor([image], return_tensors="pt")["pixel_values"].to(torch.float32).contiguous()
    save_tensors(out / "pixel_values.safetensors", pixels)

    keys, shapes, adapter_cfg = make_lora_init(base_dir, lora_dir)
    prefixes = sorted({k.split(".layers.")[0] + ".layers." for k in keys})
    assert len(prefixes) == 1, prefixes

    a_ids, _ = expand(by_name["A"]["input_ids"], by_name["A"]["labels"])
    check_json = out / "check_input.json"
    check_json.write_text(json.dumps({"example": "A", "input_ids": a_ids,
                                      "pixel_values": {"file": "pixel_values.safetensors", "key": "square.png"}})
                          + "\n")

    batch_a = Batch([by_name["A"]], pixels)
    with torch.no_grad():
        base_logits = load_base(base_dir)(input_ids=batch_a.ids, pixel_values=batch_a.pixel_values,
                                          attention_mask=batch_a.mask).logits[0, -1]
        lora_logits = lora_model(base_dir, lora_dir)(input_ids=batch_a.ids, pixel_values=batch_a.pixel_values,
                                                     attention_mask=batch_a.mask).logits[0, -1]
    checked = check_peft_load(base_dir, lora_dir, check_json, strict=True)
    assert checked["adapter_keys"] == len(keys) and checked["canonical_key_names"]
    assert (torch.tensor(checked["last_logits"]) - lora_logits).abs().max().item() < 1e-5
    assert (lora_logits - base_logits).abs().max().item() > 1e-3, "the adapter should change the logits"

    golden = {
        "base": BASE_REL, "image_token_id": IMAGE_TOKEN_ID, "image_seq_length": IMAGE_SEQ, "ignore_index": IGNORE,
        "examples": {e["name"]: {"expanded_length": len(expand(e["input_ids"], e["labels"])[0]),
                                 "label_count": Batch([e], pixels).count, "image": e["image"]} for e in examples},
        "pixel_values": {"file": "pixel_values.safetensors", "keys": {k: list(v.shape) for k, v in pixels.items()},
                         "processor": "AutoImageProcessor.from_pretrained(clip-llama, backend='pil'): "
                                      "CLIPImageProcessorPil, shortest_edge 32, bicubic, center crop 32, "
                                      "rescale 1/255, CLIP mean/std"},
        "lora": {"dir": "lora-init",
                 "config": {"r": 4, "lora_alpha": 8, "scale": 2.0, "lora_dropout": 0.0, "bias": "none",
                            "target_modules": LORA_TARGET, "task_type": "CAUSAL_LM"},
                 "keys": keys, "shapes": shapes, "key_prefix": prefixes[0],
                 "lora_b_init": "torch.Generator().manual_seed(8); randn(shape)*0.05 per lora_B in named_parameters "
                                "order; lora_A: PEFT kaiming_uniform(a=sqrt(5)) after torch.manual_seed(7)"},
        "base_logits": base_logits.tolist(),
        "lora_init_logits": lora_logits.tolist(),
        "cases": {},
    }
    cases = golden["cases"]
    cases["lora"] = case_lora(base_dir, lora_dir, batch_a, out)
    cases["projector"] = case_projector(base_dir, batch_a, out)
    cases["lora+projector"] = case_lora_projector(base_dir, lora_dir, batch_a, out)
    cases["vision+projector"] = case_vision_projector(base_dir, batch_a, out)
    cases["lora-clip"] = case_lora_clip(base_dir, lora_dir, batch_a, out)
    cases["grad-accum"] = case_grad_accum(base_dir, lora_dir, by_name["A"], by_name["B"], pixels, "grad-accum", out)
    cases["grad-accum-text"] = case_grad_accum(base_dir, lora_dir, by_name["A"], by_name["B-text"], pixels,
                                               "grad-accum-text", out)
    cases["schedules"] = case_schedules()
    cases["adamw"] = case_adamw()

    vlmsh = out / "vlmsh-adapter"
    if vlmsh.is_dir():
        checked = check_peft_load(base_dir, vlmsh, check_json, strict=False)
        golden["vlmsh_adapter_logits"] = checked["last_logits"]
        golden["vlmsh_adapter_canonical_key_names"] = checked["canonical_key_names"]

    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    (out / "README.md").write_text(README.lstrip("\n"))
    print(f"[train] losses lora {cases['lora']['losses']} projector {cases['projector']['losses']}", flush=True)
