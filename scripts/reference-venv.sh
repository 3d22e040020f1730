#!/usr/bin/env bash
# Creates the Python environment of the reference implementations (outside the repo), once.
# Used by `make bench` and `make fixtures`; tests never need it.
set -euo pipefail
venv="$1"
if "$venv/bin/python" -c "import torch, transformers, peft, gguf, PIL, safetensors, tokenizers, bitsandbytes, llama_cpp" 2>/dev/null; then
    exit 0
fi
echo "setting up the reference Python environment in $venv (torch, transformers, llama-cpp-python …)" >&2
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    torch transformers peft gguf pillow safetensors tokenizers numpy sentencepiece bitsandbytes
CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install --quiet --disable-pip-version-check llama-cpp-python
