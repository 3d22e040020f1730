"""SmolLM2-135M-Instruct reference outputs: transformers (float32) on the real Q4_1 GGUF.

For each prompt, golden.json records the prompt ids, the top-5 logits and the logits of a fixed set
of token ids at the last position, and a 32-token greedy continuation. transformers dequantizes the
GGUF to float32 and undoes llama.cpp's Q/K row permutation (LlamaTensorProcessor), so this is the
model as trained, computed independently of ggml.

Needs ~/.vlmsh/models/SmolLM2-135M-Instruct.Q4_1.gguf (or $VLMSH_SMOLLM_GGUF); no hub access.
"""
import importlib.metadata
import json
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

GGUF = pathlib.Path(os.environ.get("VLMSH_SMOLLM_GGUF", "~/.vlmsh/models/SmolLM2-135M-Instruct.Q4_1.gguf")).expanduser()
NEW_TOKENS = 32
TOP_K = 5
# Spread over the vocabulary: specials, byte-level pieces, common and rare words, the last id.
PROBE_IDS = [0, 1, 2, 3, 17, 28, 198, 216, 279, 314, 504, 1000, 2000, 4649, 8000, 12345, 20000, 30000, 40000, 49151]

LONG = (
    "The history of computing is a story of people trying to make arithmetic cheaper. Early mechanical "
    "calculators, such as those built by Pascal and Leibniz in the seventeenth century, could add and "
    "multiply, but they were expensive, fragile and slow. In the nineteenth century Charles Babbage designed "
    "the Difference Engine and later the Analytical Engine, a general-purpose machine with a store and a mill "
    "that anticipated the memory and processor of modern computers. Ada Lovelace wrote what is often called "
    "the first program for it, a method for computing Bernoulli numbers. Nearly a hundred years later, "
    "electromechanical relays and then vacuum tubes made electronic computers possible. Machines such as "
    "Colossus and ENIAC filled entire rooms, consumed enormous amounts of power, and needed teams of "
    "engineers to keep them running. The invention of the transistor in 1947 and of the integrated circuit "
    "a decade later changed everything: components became smaller, faster and more reliable every year. "
    "By the 1970s a complete processor fit on a single chip, and personal computers began to appear in "
    "homes and offices. Today a phone in a pocket is millions of times more powerful than ENIAC, and "
    "software, rather than hardware, is usually the hardest part of building a useful system."
)

RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "東京は日本の首都で、",
    "1, 2, 3, 4, 5,",
    "Q: What is the boiling point of water at sea level?\nA:",
    LONG,
]

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Translate 'good morning' into Spanish.",
    "用一句话介绍一下你自己。",
    "Give me three tips for sleeping better.",
    "hi",
    LONG + "\n\nSummarize the text above in one sentence.",
]


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _chat_ids(tok, prompt):
    msgs = [{"role": "user", "content": prompt}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    ids = list(ids)
    assert ids == tok(text, add_special_tokens=False).input_ids, "chat ids differ from tokenizing the rendered text"
    return text, ids


def _record(model, tok, kind, prompt, text, ids, stop_ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0, -1].to(torch.float32)
    top = torch.topk(logits, TOP_K)
    out = model.generate(
        x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS,
        eos_token_id=stop_ids, pad_token_id=stop_ids[0], repetition_penalty=1.0)
    new = out[0, len(ids):].tolist()
    assert new[0] == int(top.indices[0]), "greedy first token is not the argmax"
    stopped = len(new) < NEW_TOKENS or new[-1] in stop_ids
    return {
        "kind": kind,
        "prompt": prompt,
        "text": text,
        "prompt_ids": ids,
        "top5": [[int(i), float(v)] for i, v in zip(top.indices, top.values)],
        "probe_logits": [float(logits[i]) for i in PROBE_IDS],
        "greedy_ids": new,
        "greedy_text": tok.decode(new),
        "stopped_early": stopped,
        "stop_token": new[-1] if stopped else None,
    }


def generate(out_dir):
    if not GGUF.exists():
        raise SystemExit(f"{GGUF}: not found (run `vlmsh pull` or set VLMSH_SMOLLM_GGUF)")
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, torch_dtype=torch.float32).eval()

    # The GGUF stores q/k rows permuted for ggml's rope; golden values are only right if undone.
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, LlamaTensorProcessor
    assert TENSOR_PROCESSORS.get("llama") is LlamaTensorProcessor, "transformers no longer un-permutes llama q/k"

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    stop_ids = sorted({2, im_end})  # EOS id 2 (which is <|im_end|> in this vocabulary)

    cases = []
    for p in RAW_PROMPTS:
        ids = tok(p).input_ids
        cases.append(_record(model, tok, "raw", p, p, ids, stop_ids))
    for p in CHAT_PROMPTS:
        text, ids = _chat_ids(tok, p)
        cases.append(_record(model, tok, "chat", p, text, ids, stop_ids))
    assert max(len(c["prompt_ids"]) for c in cases) >= 200
    assert "Paris" in cases[0]["greedy_text"], cases[0]["greedy_text"]

    golden = {
        "model": GGUF.name,
        "model_bytes": GGUF.stat().st_size,
        "dtype": "float32",
        "new_tokens": NEW_TOKENS,
        "stop_ids": stop_ids,
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "probe_ids": PROBE_IDS,
        "qk_unpermuted": True,
        "versions": {d: _version(d) for d in ["torch", "transformers", "gguf", "tokenizers", "numpy"]},
        "cases": cases,
    }
    (out_dir / "golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    for c in cases:
        print(f"  {c['kind']:4} {len(c['prompt_ids']):4} ids  top1 {c['top5'][0][0]:6}  "
              f"{'stop' if c['stopped_early'] else '    '}  {c['greedy_text'][:50]!r}")
