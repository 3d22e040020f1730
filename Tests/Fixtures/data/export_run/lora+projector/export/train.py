"""Trains the run this folder holds on transformers + PEFT, one process or many (torchrun, deepspeed).

Written by `vlmsh export-run`; run.json says what to train and in which order:
- the model is the LLaVA folder run.json names (`--model` overrides), LlavaForConditionalGeneration in float32;
- init/ holds the trainable weights at step 0 as vlmsh starts them (the PEFT LoRA, the projector);
- tokenized.jsonl holds every row as vlmsh trains on it: input ids with each image expanded to its
  feature positions, labels (-100 outside the replies), the row's images (relative to this folder);
- run.json's "steps" list the rows of each optimizer step (vlmsh's seeded order, length grouping included).
Each step's rows are dealt out over the processes; every process adds sum(CE) / N for its rows, N
being the label tokens of the whole step (vlmsh's and the HF Trainer's normalization), and the
gradients are summed over processes, so the losses do not depend on how many processes run.
AdamW with LLaVA's groups (no decay on biases and norms, the projector at mm_projector_lr),
transformers' schedules, clip_grad_norm_. The output folder is what LLaVA's train.py leaves
(adapter_config.json, adapter_model.safetensors, non_lora_trainables.bin or mm_projector.bin,
trainer_state.json), which `vlmsh import-run` reads.
"""
import argparse
import json
import math
import os
import pathlib
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
IGNORE = -100
PROJECTOR = "multi_modal_projector"
TOWER = "vision_tower"
LLAVA_PROJECTOR = {"linear_1": "0", "linear_2": "2"}   # LLaVA's Sequential(Linear, GELU, Linear)


def arguments():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="the LLaVA folder (default: run.json's)")
    p.add_argument("--output_dir", default=str(HERE / "output"))
    p.add_argument("--deepspeed", help="a DeepSpeed config (ds_config_zero2.json, ds_config_zero3.json)")
    p.add_argument("--max_steps", type=int, help="stop after this many steps")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)   # the deepspeed launcher's
    return p.parse_args()


class Run:
    def __init__(self):
        self.config = json.loads((HERE / "run.json").read_text())
        self.rows = [json.loads(line) for line in (HERE / self.config["data"]).read_text().splitlines() if line.strip()]
        self.steps = self.config["steps"]

    def targets(self, index):
        labels = self.rows[index]["labels"]
        return sum(1 for label in labels[1:] if label != IGNORE)


def setup_distributed(use_deepspeed):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 or use_deepspeed:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if use_deepspeed:
            import deepspeed
            deepspeed.init_distributed(dist_backend=backend)
        elif not dist.is_initialized():
            dist.init_process_group(backend=backend)
    return world, rank, device


def load_model(path, run, device):
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    except TypeError:   # transformers 4.x
        model = LlavaForConditionalGeneration.from_pretrained(path, torch_dtype=torch.float32)
    image_token = getattr(model.config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(model.config, "image_token_index", None)
    if image_token != run.config["image_token_id"]:
        raise SystemExit(f"{path}: image token {image_token}, the exported rows use {run.config['image_token_id']}")
    for p in model.parameters():
        p.requires_grad_(False)
    mode = run.config["mode"]
    if run.config.get("lora_init"):
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(HERE / run.config["lora_init"]), is_trainable="lora" in mode)
    projector = run.config.get("projector_init")
    if projector:
        from safetensors.torch import load_file
        weights = load_file(str(HERE / projector))
        module = next(m for n, m in model.named_modules() if n.endswith(PROJECTOR))
        module.load_state_dict({k.split(PROJECTOR + ".", 1)[1]: v for k, v in weights.items()})
    for name, p in model.named_parameters():
        if PROJECTOR in name and "projector" in mode:
            p.requires_grad_(True)
    if run.config.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model.to(device)


def image_processor(path):
    from transformers import AutoImageProcessor
    try:
        return AutoImageProcessor.from_pretrained(path, backend="pil")   # transformers 5: PIL's resampling, as vlmsh
    except TypeError:
        return AutoImageProcessor.from_pretrained(path, use_fast=False)


class Collator:
    def __init__(self, run, processor, device):
        self.run, self.processor, self.device, self.pixels = run, processor, device, {}

    def image(self, name):
        if name not in self.pixels:
            from PIL import Image
            with Image.open(HERE / name) as image:
                pixels = self.processor([image.convert("RGB")], return_tensors="pt")["pixel_values"]
            self.pixels[name] = pixels.to(torch.float32)
        return self.pixels[name]

    def __call__(self, indices, every_module=False):
        """Rows right-padded to the longest (pad id, label -100, mask 0) and their images in order.

        `every_module` (DeepSpeed, whose processes must run the same modules in the same order, the
        vision tower and projector included): a batch without images gets a blank one after the
        padding of its first row, masked out and unlabelled, so it changes no loss and no gradient."""
        rows = [self.run.rows[i] for i in indices]
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.run.config["pad_id"]
        images = [self.image(name) for r in rows for name in r.get("images", [])]
        blank = every_module and not images
        if blank:
            size, count = self.run.config["image_size"], self.run.config["image_feature_count"]
            images = [torch.zeros(1, 3, size, size)]
            width += count
            rows = [dict(rows[0], input_ids=rows[0]["input_ids"] + [pad] * (width - count - len(rows[0]["input_ids"]))
                         + [self.run.config["image_token_id"]] * count)] + rows[1:]
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows])
        labels = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows])
        mask = torch.tensor([[1] * len(r["labels"]) + [0] * (width - len(r["labels"])) for r in rows])
        batch = {"input_ids": ids.to(self.device), "labels": labels.to(self.device), "attention_mask": mask.to(self.device)}
        if images:
            batch["pixel_values"] = torch.cat(images).to(self.device)
        return batch


def summed_cross_entropy(model, batch):
    """sum over positions i with labels[i+1] != -100 of CE(logits[i], labels[i+1])."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits.float()
    logits, targets = logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
    keep = targets != IGNORE
    return F.cross_entropy(logits[keep], targets[keep], reduction="sum")


def parameter_groups(model, optim):
    """LLaVATrainer.create_optimizer's groups as vlmsh makes them: decay on everything but biases and
    norms; the projector at mm_projector_lr, the vision tower at mm_vision_tower_lr when given."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = not name.endswith("bias") and "norm" not in name
        if PROJECTOR in name:
            lr = optim.get("mm_projector_lr") or optim["lr"]
        elif TOWER in name:
            lr = optim.get("mm_vision_tower_lr") or optim["lr"]
        else:
            lr = optim["lr"]
        key = (lr, decays)
        groups.setdefault(key, {"params": [], "lr": lr, "weight_decay": optim["weight_decay"] if decays else 0.0})
        groups[key]["params"].append(p)
    return list(groups.values())


def schedule_factor(schedule):
    """transformers' get_scheduler: the factor of each group's base rate at optimizer step `step` (0-based)."""
    kind, warmup, total = schedule["kind"], schedule["warmup_steps"], schedule["total_steps"]

    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        if kind == "constant":
            return 1.0
        if kind == "linear":
            return max(0.0, (total - step) / max(1, total - warmup))
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return factor


def reduce_gradients(params, world):
    """Sums every gradient over the processes; a parameter no process reached keeps no gradient
    (AdamW then leaves it as it is, as in vlmsh)."""
    if world == 1:
        return
    reached = torch.tensor([0.0 if p.grad is None else 1.0 for p in params])
    dist.all_reduce(reached, op=dist.ReduceOp.MAX)
    for p, was in zip(params, reached.tolist()):
        if not was:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def global_sum(value, world, device):
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item()


def trainable_state(model):
    """name -> tensor of the trained parameters (gathered under ZeRO-3)."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name] = p
    return out


def save(model, out_dir, run, log, step, total, is_main):
    """The folder as LLaVA's train.py leaves it: the PEFT adapter (LoRA) and the projector under
    LLaVA's names (non_lora_trainables.bin beside a LoRA, mm_projector.bin without), trainer_state.json."""
    params = trainable_state(model)
    try:
        import deepspeed
        gathered = deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None)
    except Exception:
        import contextlib
        gathered = contextlib.nullcontext()
    with gathered:
        state = {n: p.detach().cpu().clone() for n, p in params.items()}
    if not is_main:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    projector = {}
    for name, tensor in state.items():
        if PROJECTOR in name:
            linear, kind = name.split(PROJECTOR + ".", 1)[1].split(".")
            projector[f"{LLAVA_PROJECTOR[linear]}.{kind}"] = tensor
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(out_dir), state_dict=state)
        (out_dir / "README.md").unlink(missing_ok=True)
        cfg_path = out_dir / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = run.config["model"]
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if projector:
            torch.save({f"base_model.model.model.mm_projector.{k}": v for k, v in projector.items()},
                       out_dir / "non_lora_trainables.bin")
    elif projector:
        torch.save({f"model.mm_projector.{k}": v for k, v in projector.items()}, out_dir / "mm_projector.bin")
    steps_per_epoch = run.config["steps_per_epoch"]
    trainer_state = {
        "best_global_step": None, "best_metric": None, "best_model_checkpoint": None,
        "epoch": log[-1]["epoch"] if log else 0.0, "global_step": step, "max_steps": total,
        "num_train_epochs": (total + steps_per_epoch - 1) // steps_per_epoch, "logging_steps": 1,
        "save_steps": run.config.get("save_steps") or total, "train_batch_size": run.config["batch_size"],
        "is_hyper_param_search": False, "is_local_process_zero": True, "is_world_process_zero": True,
        "num_input_tokens_seen": 0, "total_flos": 0, "trial_name": None, "trial_params": None,
        "log_history": log,
    }
    (out_dir / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")


def main():
    args = arguments()
    run = Run()
    world, rank, device = setup_distributed(args.deepspeed is not None)
    torch.manual_seed(run.config["seed"])
    model_path = args.model or run.config["model"]
    model = load_model(model_path, run, device)
    model.train()
    collate = Collator(run, image_processor(model_path), device)
    optim = run.config["optimizer"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(model, optim), lr=optim["lr"], betas=tuple(optim["betas"]),
                                  eps=optim["eps"], weight_decay=optim["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(run.config["schedule"]))
    max_norm = run.config["max_grad_norm"]
    engine = None
    micro_per_rank = None
    if args.deepspeed:
        import deepspeed
        ds_config = json.loads(pathlib.Path(args.deepspeed).read_text())
        micro_per_rank = ds_config["gradient_accumulation_steps"]
        # The loss of a step is already normalized over the whole step (N) and summed over processes;
        # DeepSpeed averages gradients over processes, so each process's part is scaled back up.
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                               config=ds_config)
        model = engine

    steps = run.steps if args.max_steps is None else run.steps[:args.max_steps]
    total = run.config["schedule"]["total_steps"]
    out_dir = pathlib.Path(args.output_dir)
    log = []
    batch_size = run.config["batch_size"]
    for index, step in enumerate(steps):
        started = time.time()
        rows = [i for micro in step["micro_batches"] for i in micro]
        count = sum(run.targets(i) for i in rows)
        mine = rows[rank::world]
        micro_batches = [mine[k:k + batch_size] for k in range(0, len(mine), batch_size)]
        if engine is not None and len(micro_batches) != micro_per_rank:
            raise SystemExit(f"step {index + 1}: {len(micro_batches)} micro-batches on process {rank}, the DeepSpeed "
                             f"config says {micro_per_rank}: export again with this --nproc-per-node")
        loss = 0.0
        for micro in micro_batches:
            part = summed_cross_entropy(model, collate(micro, every_module=engine is not None)) / count
            if engine is not None:
                engine.backward(part * world, scale_wrt_gas=False)
                engine.step()   # the optimizer steps at the last micro-batch (gradient_accumulation_steps)
            else:
                part.backward()
            loss += part.item()
        loss = global_sum(loss, world, device)
        lr_logged = optim["lr"] * schedule_factor(run.config["schedule"])(index)
        if engine is not None:
            norm = engine.get_global_grad_norm()
            norm = float(norm) if norm is not None else float("nan")
        else:
            reduce_gradients(params, world)
            reached = [p for p in params if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(reached, max_norm if max_norm > 0 else float("inf")).item()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        entry = {"epoch": step["epoch"], "grad_norm": norm, "learning_rate": lr_logged, "loss": loss, "step": index + 1}
        log.append(entry)
        if rank == 0:
            print(json.dumps({**entry, "seconds": round(time.time() - started, 3)}), flush=True)
        save_steps = run.config.get("save_steps")
        if save_steps and (index + 1) % save_steps == 0 and index + 1 < total:
            save(model.module if engine is not None else model, out_dir / f"checkpoint-{index + 1}", run, log, index + 1,
                 total, rank == 0)
    save(model.module if engine is not None else model, out_dir, run, log, len(steps), total, rank == 0)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()