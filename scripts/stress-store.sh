#!/usr/bin/env bash
# One session store under load and under kill -9, as a user's machine meets it:
#   1. for DURATION seconds, two `vlmsh run` chats in a loop and a fine-tune in a loop, all on one
#      store: every process must exit 0, none may print "database is locked", and every turn of a
#      finished chat must be stored with its reply;
#   2. KILLS times each, a chat and a fine-tune (checkpoint every step) killed with SIGKILL at a
#      random moment: every reply the chat had printed in full must be stored, every checkpoint
#      the store lists must exist on disk, and `--resume` from the newest one must finish;
#   3. PRAGMA integrity_check on the store.
# Usage: scripts/stress-store.sh [DURATION=180] [KILLS=10]   (needs `make model` and a release build)
set -uo pipefail
duration=${1:-180}; kills=${2:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
vlmsh=${VLMSH:-$root/.build/release/vlmsh}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export VLMSH_HOME=$work/home
mkdir -p "$VLMSH_HOME/models"
ln -s "${VLMSH_MODELS:-$HOME/.vlmsh/models}"/SmolLM2-135M-Instruct.Q4_1.gguf "$VLMSH_HOME/models/"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

chat_script() {   # chat_script MARKER TURNS
    printf '/load smollm2\n/set temperature 0\n/set max_tokens 12\n'
    for k in $(seq 1 "$2"); do echo "$1-$k: name a colour"; done
}
for i in $(seq 1 40); do echo "{\"conversations\": [{\"from\": \"human\", \"value\": \"Count to $i.\"}, {\"from\": \"gpt\", \"value\": \"$(seq -s ' ' 1 $((i % 7 + 1)))\"}]}"; done > "$work/data.jsonl"
# exec: the background job's pid is vlmsh's own, so kill -9 reaches it.
finetune() { exec "$vlmsh" finetune --model smollm2 --data "$work/data.jsonl" --mode lora --batch-size 2 "$@"; }
# Stored user turns of MARKER that have their reply right after them.
answered() { sqlite3 "$VLMSH_HOME/vlmsh.sqlite" "SELECT count(*) FROM turns u JOIN turns a ON a.session_id = u.session_id AND a.idx = u.idx + 1 AND a.role = 'assistant' WHERE u.role = 'user' AND u.text LIKE '$1-%';"; }

echo "== two chats and a fine-tune on one store for $duration s"
end=$((SECONDS + duration))
loop_chat() {
    local name=$1 n=0
    while [ $SECONDS -lt $end ]; do
        n=$((n + 1)); chat_script "$name$n" 6 > "$work/$name$n.vlm"
        "$vlmsh" run "$work/$name$n.vlm" > "$work/$name$n.out" 2>&1 || echo "$name$n exit $?" >> "$work/errors"
    done
    echo "$n" > "$work/$name.count"
}
loop_finetune() {
    local n=0
    while [ $SECONDS -lt $end ]; do
        n=$((n + 1))
        (finetune --out "$work/ft$n" --steps 10 --save-steps 2) > "$work/ft$n.out" 2>&1 || echo "ft$n exit $?" >> "$work/errors"
    done
    echo "$n" > "$work/ft.count"
}
loop_chat A & loop_chat B & loop_finetune & wait
[ -s "$work/errors" ] && fail "exits: $(tr '\n' ' ' < "$work/errors")"
grep -l "locked" "$work"/*.out 2>/dev/null && fail "database is locked (files above)"
for name in A B; do
    for n in $(seq 1 "$(cat "$work/$name.count")"); do
        got=$(answered "$name$n"); [ "$got" = 6 ] || fail "$name$n: $got of 6 turns stored with their reply"
    done
done
echo "chats: $(cat "$work/A.count") + $(cat "$work/B.count") runs, fine-tunes: $(cat "$work/ft.count")"

echo "== kill -9, $kills times each"
for i in $(seq 1 "$kills"); do
    chat_script "K$i" 20 > "$work/K$i.vlm"
    "$vlmsh" run "$work/K$i.vlm" > "$work/K$i.out" 2>&1 & pid=$!
    sleep "$(awk -v s=$RANDOM 'BEGIN { srand(s); printf "%.2f", 0.5 + rand() * 3 }')"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    # A reply is complete once the next prompt line follows it.
    printed=$(grep -c "^» K$i-" "$work/K$i.out"); [ "$printed" -gt 0 ] && printed=$((printed - 1))
    got=$(answered "K$i"); [ "$got" -ge "$printed" ] || fail "K$i: $printed replies printed, $got stored"

    finetune --out "$work/kill$i" --steps 30 --save-steps 1 > "$work/kill$i.out" 2>&1 & pid=$!
    # Killed while it writes a checkpoint a step: some random moment after the first one.
    for _ in $(seq 1 600); do [ -d "$work/kill$i/checkpoint-1" ] && break; sleep 0.1; done
    sleep "$(awk -v s=$RANDOM 'BEGIN { srand(s); printf "%.2f", rand() * 3 }')"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    while read -r path; do [ -d "$path" ] || fail "kill$i: the store lists $path, which is missing"; done \
        < <(sqlite3 "$VLMSH_HOME/vlmsh.sqlite" "SELECT path FROM checkpoints WHERE path LIKE '$work/kill$i/%';")
    newest=$(ls -d "$work/kill$i"/checkpoint-[0-9]* 2>/dev/null | grep -v '\.tmp-' | sort -t- -k2 -n | tail -1)
    echo "kill $i: chat $got of $printed printed replies stored; fine-tune killed with ${newest##*/checkpoint-} steps saved"
    if [ -n "$newest" ]; then
        (finetune --out "$work/kill$i" --steps 30 --save-steps 10 --resume "$newest") > "$work/resume$i.out" 2>&1 \
            || fail "kill$i: --resume $newest: $(tail -1 "$work/resume$i.out")"
        ls -d "$work/kill$i"/*.tmp-* 2>/dev/null && fail "kill$i: temporary checkpoint folders left after the resumed run"
    fi
done

echo "== integrity"
check=$(sqlite3 "$VLMSH_HOME/vlmsh.sqlite" "PRAGMA integrity_check;")
[ "$check" = ok ] || fail "integrity_check: $check"
echo "sessions: $(sqlite3 "$VLMSH_HOME/vlmsh.sqlite" 'SELECT count(*) FROM sessions;'), turns: $(sqlite3 "$VLMSH_HOME/vlmsh.sqlite" 'SELECT count(*) FROM turns;'), runs: $(sqlite3 "$VLMSH_HOME/vlmsh.sqlite" 'SELECT count(*) FROM runs;'), checkpoints: $(sqlite3 "$VLMSH_HOME/vlmsh.sqlite" 'SELECT count(*) FROM checkpoints;')"
[ $failures = 0 ] && echo "stress: all checks passed" || { echo "stress: $failures failed"; exit 1; }
