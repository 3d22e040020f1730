"""`vlmsh export-run` against torchrun: the launch folder the release binary writes, trained by
`python -m torch.distributed.run --nproc_per_node 2` (two CPU processes, gloo) on the tiny LLaVA.

For each case (`lora`; `lora+projector` with --mm-projector-lr) writes under data/export_run/<case>/:
export/  the folder `vlmsh export-run --from-args …` wrote (train.py, launch.sh, ds_config_zero{2,3}.json,
         requirements.txt, run.json, tokenized.jsonl, llava.json; images/ and init/ left out, run.json's
         model path made relative to export/)
output/  what train.py left under torchrun: adapter_config.json, adapter_model.safetensors,
         non_lora_trainables.bin (lora+projector), trainer_state.json (base_model_name_or_path relative)
and golden.json: the cases' finetune arguments ($MODEL, $DATA stand for the paths), torchrun's log
(losses, grad norms, learning rates), the sha256 of the train.py that ran, and the losses `vlmsh
finetune` gave with the same arguments when the fixture was made (the test recomputes those).
Needs the release binary: swift build -c release.
"""
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VLMSH = ROOT / ".build" / "release" / "vlmsh"
MODEL_REL = "../llava/clip-llama"            # relative to data/export_run/
IMAGES_REL = "../../llava/images"            # relative to data/export_run/data/
PROCESSES = 2

COMMON = ["--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--steps", "3"]
CASES = {
    "lora": COMMON + ["--mode", "lora", "--batch-size", "2", "--grad-accum", "2", "--lr", "5e-3", "--weight-decay", "0.1",
                      "--scheduler", "cosine", "--max-grad-norm", "1", "--seed", "7", "--group-by-modality-length"],
    "lora+projector": COMMON + ["--mode", "lora+projector", "--batch-size", "1", "--grad-accum", "4", "--lr", "5e-3",
                                "--mm-projector-lr", "2e-2", "--weight-decay", "0.05", "--scheduler", "linear",
                                "--warmup-steps", "1", "--max-grad-norm", "0.5", "--seed", "11"],
}


def conversations(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": text} for i, text in enumerate(turns)]


def make_data(folder):
    """Eight LLaVA rows: one- and two-image rows, text-only rows, one and two exchanges, different lengths."""
    sq, wide, tall = (f"{IMAGES_REL}/{name}.png" for name in ["square", "wide", "tall"])
    rows = [
        {"id": "a", "image": sq, "conversations": conversations("<image>\nWhat is this?", "A square picture.")},
        {"id": "b", "image": wide, "conversations": conversations(
            "<image>\nDescribe the picture in a few words.", "A wide picture with colours.", "Is it tall?", "No, it is wide.")},
        {"id": "c", "conversations": conversations("Say hello.", "Hello there, how are you today?")},
        {"id": "d", "image": tall, "conversations": conversations("What shape is the image?<image>", "Tall.")},
        {"id": "e", "image": [sq, wide], "conversations": conversations(
            "<image>\n<image>\nWhich one is wider?", "The second one is wider than the first.")},
        {"id": "f", "conversations": conversations("Count to three.", "One, two, three.", "And back?", "Three, two, one.")},
        {"id": "g", "image": wide, "conversations": conversations("<image>\nColour?", "Mixed.")},
        {"id": "h", "conversations": conversations("Name a shape.", "A circle is a shape with no corners at all.")},
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.json").write_text(json.dumps(rows, indent=1) + "\n")


def run(command, **kwargs):
    proc = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def case_arguments(args, model, data):
    return ["--model", str(model), "--data", str(data)] + args


def generate(out):
    if not VLMSH.exists():
        raise RuntimeError(f"{VLMSH} missing: swift build -c release first")
    model = (out / MODEL_REL).resolve()
    data = out / "data" / "train.json"
    make_data(data.parent)
    home = pathlib.Path(tempfile.mkdtemp(prefix="vlmsh-export-run-"))
    env = {**os.environ, "VLMSH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    golden = {"processes": PROCESSES, "model": MODEL_REL, "data": "data/train.json", "cases": {}}
    try:
        for name, args in CASES.items():
            folder = out / name
            shutil.rmtree(folder, ignore_errors=True)
            export, output = folder / "export", folder / "output"
            run([VLMSH, "export-run", "--out", export, "--nproc-per-node", PROCESSES, "--from-args",
                 *case_arguments(args, model, data)], env=env)
            log = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", PROCESSES,
                       export / "train.py", "--output_dir", output], env=env, cwd=export)
            steps = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
            finetune = run([VLMSH, "finetune", *case_arguments(args, model, data), "--out", home / name, "--json"], env=env)
            vlmsh_losses = [json.loads(line)["loss"] for line in finetune.splitlines()
                            if line.startswith("{") and "loss" in json.loads(line) and "step" in json.loads(line)]

            # Paths of this machine out of the committed files.
            run_json = json.loads((export / "run.json").read_text())
            run_json["model"] = "../../" + MODEL_REL
            (export / "run.json").write_text(json.dumps(run_json, indent=2, sort_keys=True) + "\n")
            cfg_path = output / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = "../../" + MODEL_REL
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            shutil.rmtree(export / "images")
            shutil.rmtree(export / "init")

            golden["cases"][name] = {
                "args": ["--model", "$MODEL", "--data", "$DATA"] + args,
                "torchrun": {"losses": [s["loss"] for s in steps], "grad_norms": [s["grad_norm"] for s in steps],
                             "learning_rates": [s["learning_rate"] for s in steps]},
                "vlmsh_losses_when_generated": vlmsh_losses,
                "train_py_sha256": hashlib.sha256((export / "train.py").read_bytes()).hexdigest(),
            }
            print(f"[export_run] {name}: torchrun {golden['cases'][name]['torchrun']['losses']} vlmsh {vlmsh_losses}", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
