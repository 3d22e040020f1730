"""A run of the Hugging Face Trainer as LLaVA's train.py does one (LoRA on the language model, the
projector trained beside it), on the tiny LLaVA: the output folder `vlmsh import-run` reads.

Writes data/import_run/run/ as the Trainer and LLaVA leave it: adapter_config.json,
adapter_model.safetensors, non_lora_trainables.bin (the projector under LLaVA's names, as
`get_peft_state_non_lora_maybe_zero_3` saves it), trainer_state.json, training_args.bin and
checkpoint-2/ (optimizer, scheduler and RNG files dropped to keep the fixture small); and
golden.json with the trained model's loss on each example and the Trainer's log.
"""
import json
import pathlib
import shutil

import torch
from PIL import Image
from transformers import AutoImageProcessor, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

import gen_train

PROJECTOR_NAMES = {"linear_1": "0", "linear_2": "2"}   # LLaVA's Sequential(Linear, GELU, Linear)


class Rows(torch.utils.data.Dataset):
    def __init__(self, examples, pixels):
        self.rows = []
        for e in examples:
            ids, labels = gen_train.expand(e["input_ids"], e["labels"])
            row = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
            if e["image"]:
                row["pixel_values"] = pixels[pathlib.Path(e["image"]).name][0]
            self.rows.append(row)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(rows):
    assert len(rows) == 1
    row = rows[0]
    batch = {"input_ids": row["input_ids"][None], "labels": row["labels"][None],
             "attention_mask": torch.ones_like(row["input_ids"])[None]}
    if "pixel_values" in row:
        batch["pixel_values"] = row["pixel_values"][None]
    return batch


def generate(out):
    torch.manual_seed(0)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    train = out.parent / "train"
    base_dir = (train / gen_train.BASE_REL).resolve()
    examples = [json.loads(line) for line in (train / "examples.jsonl").read_text().splitlines()]
    processor = AutoImageProcessor.from_pretrained(str(base_dir), backend="pil")
    pixels = {}
    for name in ["square.png", "wide.png"]:
        image = Image.open(train / gen_train.IMAGES_REL / name)
        pixels[name] = processor([image], return_tensors="pt")["pixel_values"].to(torch.float32)

    model = gen_train.lora_model(base_dir, train / "lora-init")
    for name, p in model.named_parameters():
        if gen_train.PROJECTOR in name:
            p.requires_grad_(True)
    model.train()

    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    args = TrainingArguments(output_dir=str(run), max_steps=3, per_device_train_batch_size=1, learning_rate=1e-2,
                             lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
                             save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, seed=0,
                             dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(examples, pixels), data_collator=collate)
    trainer.train()
    trainer.save_model(str(run))
    trainer.save_state()
    non_lora = {}
    for name, p in model.named_parameters():
        if gen_train.PROJECTOR in name:
            linear, kind = name.split(gen_train.PROJECTOR + ".")[1].split(".")
            non_lora[f"base_model.model.model.mm_projector.{PROJECTOR_NAMES[linear]}.{kind}"] = p.detach().clone()
    torch.save(non_lora, run / "non_lora_trainables.bin")
    for checkpoint in run.glob("checkpoint-*"):
        for name in ["optimizer.pt", "scheduler.pt", "rng_state.pth", "README.md"]:
            (checkpoint / name).unlink(missing_ok=True)
    (run / "README.md").unlink(missing_ok=True)

    model.eval()
    losses = {}
    with torch.no_grad():
        for e in examples:
            batch = gen_train.Batch([e], pixels)
            total, count = gen_train.sum_ce(model, batch)
            losses[e["name"]] = total.item() / count
    state = json.loads((run / "trainer_state.json").read_text())
    golden = {"losses_after_training": losses, "log_history": state["log_history"], "global_step": state["global_step"],
              "base": "../llava/clip-llama", "examples": "../train/examples.jsonl"}
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
