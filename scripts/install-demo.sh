#!/usr/bin/env bash
# Puts the demo vision-language model shipped in models/vlmsh-demo (built by
# sessions/build-demo.vlm) into the model store as `vlmsh-demo`, replacing an older copy.
set -euo pipefail
home="${VLMSH_HOME:-$HOME/.vlmsh}"
src="$(cd "$(dirname "$0")/.." && pwd)/models/vlmsh-demo"
dest="$home/models/vlmsh-demo"
[ -f "$src/config.json" ] || { echo "$src: the demo model is missing from the checkout" >&2; exit 1; }
diff -rq "$src" "$dest" >/dev/null 2>&1 && exit 0
mkdir -p "$home/models"
rm -rf "$dest.part"
cp -R "$src" "$dest.part"
rm -rf "$dest"
mv "$dest.part" "$dest"
echo "installed $dest" >&2
