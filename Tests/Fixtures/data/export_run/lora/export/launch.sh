#!/bin/sh
# Trains this folder's run (written by `vlmsh export-run`), from this folder:
#   ./launch.sh                     the default: torchrun --nproc_per_node $NPROC (gloo on CPUs, nccl on GPUs)
#   ./launch.sh deepspeed [zero3]   deepspeed --num_gpus $NPROC with ds_config_zero2.json (or zero3)
#   ./launch.sh cpu                 one process, no torch.distributed
# Further arguments go to train.py (--model PATH, --output_dir DIR, --max_steps N). NPROC
# (default 2) is the process count the DeepSpeed configs were written for; PYTHON picks
# the interpreter (pip install -r requirements.txt). The result lands in output/:
# vlmsh import-run output
set -eu
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
NPROC="${NPROC:-2}"
what="${1:-torchrun}"
[ $# -gt 0 ] && shift
case "$what" in
    cpu) exec "$PYTHON" train.py "$@" ;;
    torchrun) exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" train.py "$@" ;;
    deepspeed)
        stage=zero2
        case "${1:-}" in zero2|zero3) stage="$1"; shift ;; esac
        exec deepspeed --num_gpus "$NPROC" train.py --deepspeed "ds_config_$stage.json" "$@" ;;
    *) echo "usage: $0 [torchrun|deepspeed [zero2|zero3]|cpu] [train.py arguments]" >&2; exit 1 ;;
esac
