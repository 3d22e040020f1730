"""Tokenizer and chat-template goldens (area "tokenizers").

Writes data/tokenizers/:
  smollm2/            tokenizer.json + tokenizer_config.json of SmolLM2-135M-Instruct, read by
                      transformers from the GGUF in ~/.vlmsh/models (pre-tokenizer restored, see below)
  tiny-<name>/        small tokenizers trained here with `tokenizers`: bpe-gpt2, bpe-llama3,
                      bpe-qwen2 (byte level) and spm (Llama-2 shaped SentencePiece BPE, byte fallback)
  goldens.json        {tokenizer: [{text, ids, decoded}]} for every tokenizer above
  spm-gguf.json       GGUF-style tokens/scores/token_type of a tiny SentencePiece vocab + golden ids
  chat.json           apply_chat_template renderings (SmolLM2's own Jinja + Jinja written here for
                      llava-v1, llama-3, mistral, plain)
"""
import json
import os
import pathlib
import shutil
import tempfile

MODEL_DIR = pathlib.Path(os.path.expanduser("~/.vlmsh/models"))
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

STRINGS = [
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "multiple   spaces   between   words",
    "tabs\tand\ttabs\t\there",
    "new\nline",
    "double\n\nnewline and \r\n windows",
    "spaces before newline   \n  and after",
    "\n\n\n",
    "   ",
    "",
    "a",
    "I'm sure it's what they're saying, we've done it and I'll go; he'd know.",
    "DON'T SHOUT, IT'S RUDE. She'S here. 'quoted' text''s",
    "Numbers: 1 12 123 1234 12345 123456789012345",
    "3.14159 and -42 and 1,000,000 and 2024-05-17",
    "a1b2c3 x86_64 v2.0.1",
    "  123 spaces then digits",
    "Café naïve résumé über Straße façade",
    "Ελληνικά και русский текст",
    "日本語のテキストと中文文本",
    "한국어 텍스트입니다",
    "مرحبا بالعالم",
    "Emoji: 😀😃😄 👍🏽 ❤️",
    "Family: 👨‍👩‍👧‍👦 and flag 🇫🇷 and 🏳️‍🌈",
    "Math: ∑ ∫ √2 ≈ 1.414, ½ + ¼ = ¾",
    "def foo(x):\n    return x * 2  # comment\n",
    "for (int i = 0; i < n; i++) { sum += a[i]; }",
    "<html><body class=\"main\">Hi</body></html>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "path/to/file.txt C:\\Windows\\System32",
    "user@example.com https://example.org/a?b=c&d=e#frag",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "text before <|im_end|> and after",
    "<|endoftext|><|endoftext|>",
    "a <s> b </s> c",
    "!!!???...,,,;;;",
    "ALL CAPS SENTENCE WITH ACRONYMS NASA FBI",
    "mixedCASE camelCase snake_case kebab-case",
    "Ünïcödé ẞ ſ 'ſ ǅ",
    "zero\u200bwidth\u200cjoiners\u200d",
    "nbsp\u00a0here and\u3000ideographic space",
    "   \t  \n mixed whitespace \t\n",
    "The year 1999 was 10x better than 2000!!!",
    "She said: «Bonjour» — and left…",
]

TRAIN_EXTRA = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
To be, or not to be, that is the question. All that glitters is not gold. Knowledge is power.
It's raining cats and dogs; they're saying we'll stay inside. I've seen it, you'd agree, he'll come.
def main():\n    print("hello world")\n    return 0\n
for i in range(10):\n\tvalue = i * 2 + 1\n
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 42
Café résumé naïve über façade Straße
日本語 中文 한국어 русский Ελληνικά
""".strip()

def fuzz_strings(count=150, seed=1234):
    """Random mixes of the character classes the split regexes care about."""
    import random
    rng = random.Random(seed)
    pool = (list("abcXYZ") + list("0123456789") + [" ", " ", " ", "\t", "\n", "\r", "\r\n", "'", "'s", "'T", "'re",
            "'LL", "'ve", "'m", "'d", "ſ"] + list(".,;!?-_()[]{}\"#$%&*+/<=>@^`|~") + ["é", "ß", "Ω", "ж", "日", "本",
            "テ", "한", "ي", "½", "²", "٣", "Ⅳ", "😀", "👍🏽", "👨‍👩‍👧", "\u00a0", "\u3000", "\u2028", "\u200d", "\x0b", "\x85"])
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 24))) for _ in range(count)]


SPECIALS_BYTE = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SPECIALS_SPM = ["<unk>", "<s>", "</s>"]


def corpus():
    lines = TRAIN_EXTRA.split("\n") + [s for s in STRINGS if s]
    return lines * 3


def goldens_for(tok, strings=None):
    strings = STRINGS if strings is None else strings
    out = []
    for s in strings:
        ids = tok(s, add_special_tokens=False).input_ids
        out.append({"text": s, "ids": ids, "decoded": tok.decode(ids),
                    "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return out


def save_fast(tk, out, config):
    """Writes tokenizer.json + tokenizer_config.json and returns the transformers tokenizer."""
    from transformers import PreTrainedTokenizerFast
    out.mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), **{
        k: v for k, v in config.items() if k in ("bos_token", "eos_token", "unk_token", "pad_token")})


def train_byte_level(name, regex, out):
    from tokenizers import Tokenizer, Regex, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    if regex is None:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS_BYTE, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus(), trainer)
    if name == "bpe-llama3":
        # Llama 3 ships with ignore_merges; exercise it.
        j = json.loads(tk.to_str())
        j["model"]["ignore_merges"] = True
        tk = Tokenizer.from_str(json.dumps(j))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
              "clean_up_tokenization_spaces": False}
    return save_fast(tk, out / f"tiny-{name}", config)


def train_spm(out):
    """Llama-2 shaped: Prepend("▁") + Replace(" ", "▁"), BPE with byte fallback, no pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    bytes_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Train on words (as SentencePiece does), then run without a pre-tokenizer like Llama-2.
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS_SPM + bytes_tokens,
                                  limit_alphabet=70, show_progress=False)
    tk.train_from_iterator(corpus(), trainer)
    tk.pre_tokenizer = None
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    # BOS comes from the post-processor, as in Llama-2's tokenizer.json (no add_bos_token in the config).
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "clean_up_tokenization_spaces": False}
    return tk, save_fast(tk, out / "tiny-spm", config)


def llama_cpp_spm(text, vocab, scores, add_space_prefix=True):
    """llama.cpp's SPM tokenizer (score-ordered merges), used to check the fixture agrees with HF."""
    import heapq
    t = text.replace(" ", "▁")
    if add_space_prefix:
        t = "▁" + t
    syms = [[c, i - 1, i + 1] for i, c in enumerate(t)]
    heap = []

    def add(l, r):
        if l < 0 or r >= len(syms):
            return
        s = syms[l][0] + syms[r][0]
        if s in vocab:
            heapq.heappush(heap, (-scores[vocab[s]], l, len(s)))

    for i in range(1, len(syms)):
        add(i - 1, i)
    while heap:
        _, l, n = heapq.heappop(heap)
        r = syms[l][2]
        if r >= len(syms) or not syms[l][0] or not syms[r][0] or len(syms[l][0]) + len(syms[r][0]) != n:
            continue
        syms[l][0] += syms[r][0]
        syms[r][0] = ""
        syms[l][2] = syms[r][2]
        if syms[r][2] < len(syms):
            syms[syms[r][2]][1] = l
        add(syms[l][1], l)
        add(l, syms[l][2])
    ids, i = [], 0
    while i < len(syms):
        s = syms[i][0]
        if s in vocab:
            ids.append(vocab[s])
        else:
            ids.extend(vocab[f"<0x{b:02X}>"] for b in s.encode())
        i = syms[i][2]
    return ids


def spm_gguf_fixture(tk, hf, out):
    """GGUF `llama` metadata for the tiny SentencePiece vocab; scores follow merge order so
    llama.cpp's highest-score-first merging retraces HF's rank order."""
    j = json.loads(tk.to_str())
    vocab = j["model"]["vocab"]
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in j["model"]["merges"]]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    rank_of = {a + b: r for r, (a, b) in reversed(list(enumerate(merges)))}
    scores, types = [], []
    for i, t in enumerate(tokens):
        if t in SPECIALS_SPM:
            scores.append(0.0)
            types.append(2 if t == "<unk>" else 3)
        elif t.startswith("<0x") and len(t) == 6:
            scores.append(0.0)
            types.append(6)
        else:
            scores.append(-float(rank_of[t]) - 1.0 if t in rank_of else -1e6 - i)
            types.append(1)
    cases = []
    for s in STRINGS:
        if "<" in s:  # special tokens are covered by the tokenizer.json path
            continue
        ids = hf(s, add_special_tokens=False).input_ids
        if llama_cpp_spm(s, vocab, scores) == ids:
            cases.append({"text": s, "ids": ids, "decoded": hf.decode(ids)})
        else:
            print(f"[tokenizers] spm-gguf: llama.cpp order differs from HF for {s!r}; left out")
    fixture = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
               "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
               "tokenizer.ggml.bos_token_id": vocab["<s>"], "tokenizer.ggml.eos_token_id": vocab["</s>"],
               "tokenizer.ggml.unknown_token_id": vocab["<unk>"], "tokenizer.ggml.add_bos_token": True,
               "tokenizer.ggml.add_space_prefix": True, "cases": cases}
    (out / "spm-gguf.json").write_text(json.dumps(fixture, ensure_ascii=False) + "\n")


def smollm2(out):
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR), gguf_file=SMOLLM_GGUF)
    # transformers' GGUF conversion keeps only ByteLevel; SmolLM2's published tokenizer.json (and
    # llama.cpp's "smollm" pre-tokenizer) split every digit first. Restore that.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tmp = pathlib.Path(tempfile.mkdtemp())
    tok.save_pretrained(str(tmp))
    dest = out / "smollm2"
    dest.mkdir(parents=True, exist_ok=True)
    # Compact JSON keeps the only large fixture near 2 MB.
    compact = json.dumps(json.loads((tmp / "tokenizer.json").read_text()), ensure_ascii=False, separators=(",", ":"))
    (dest / "tokenizer.json").write_text(compact + "\n")
    config = json.loads((tmp / "tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder", None)
    if (tmp / "chat_template.jinja").exists():
        config["chat_template"] = (tmp / "chat_template.jinja").read_text()
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n")
    shutil.rmtree(tmp)
    return tok


# Jinja equivalents of prompts/*.txt (the vlmsh templates must render identically).
JINJA = {
    "llava-v1": (
        "{{ '<s>' }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set rest = messages[1:] %}{% else %}{% set system = \"A chat between a curious human and an artificial "
        "intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.\" %}"
        "{% set rest = messages %}{% endif %}{{ system + ' ' }}{% for m in rest %}{% if m['role'] == 'user' %}"
        "{{ 'USER: ' + m['content'] + ' ' }}{% else %}{{ 'ASSISTANT: ' + m['content'] + '</s>' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"),
    "llama-3": (
        "{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
        "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "mistral": (
        "{{ '<s>' }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
        "{% set rest = messages[1:] %}{% else %}{% set prefix = '' %}{% set rest = messages %}{% endif %}"
        "{% for m in rest %}{% if m['role'] == 'user' %}{{ '[INST] ' + (prefix if loop.first else '') + m['content'] + ' [/INST]' }}"
        "{% else %}{{ m['content'] + '</s>' }}{% endif %}{% endfor %}"),
    "plain": "{{ '<s>' }}{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}"
             "{% elif m['role'] == 'assistant' %}{{ m['content'] + '\\n' }}{% endif %}{% endfor %}",
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "  spaced  "},
     {"role": "assistant", "content": "ok"}, {"role": "user", "content": "<image>\nDescribe this image."}],
]


def chat_goldens(smol):
    cases = []
    for conv in CONVERSATIONS:
        for gen in (True, False):
            cases.append({"template": "chatml", "jinja": "smollm2", "messages": conv, "add_generation_prompt": gen,
                          "text": smol.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)})
    for name, jinja in JINJA.items():
        for conv in CONVERSATIONS:
            if name == "plain" and any(m["role"] == "system" for m in conv):
                continue
            for gen in (True, False):
                if name in ("mistral", "plain") and gen:
                    continue  # these formats have no generation prompt
                text = smol.apply_chat_template(conv, chat_template=jinja, tokenize=False, add_generation_prompt=gen)
                cases.append({"template": name, "messages": conv, "add_generation_prompt": gen, "text": text})
    return cases


def generate(out_dir):
    out = pathlib.Path(out_dir)
    goldens = {}
    smol = smollm2(out)
    goldens["smollm2"] = goldens_for(smol)
    goldens["smollm2-fuzz"] = goldens_for(smol, fuzz_strings())
    for name, regex in [("bpe-gpt2", None),
                        ("bpe-llama3", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                        ("bpe-qwen2", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")]:
        trained = train_byte_level(name, regex, out)
        goldens[name] = goldens_for(trained)
        goldens[name + "-fuzz"] = goldens_for(trained, fuzz_strings())
    spm_tk, spm = train_spm(out)
    goldens["spm"] = goldens_for(spm)
    goldens["spm-fuzz"] = goldens_for(spm, fuzz_strings())
    goldens["spm-with-bos"] = [{"text": s, "ids": spm(s).input_ids} for s in STRINGS[:5]]
    spm_gguf_fixture(spm_tk, spm, out)
    (out / "goldens.json").write_text(json.dumps(goldens, ensure_ascii=False, indent=0) + "\n")
    (out / "chat.json").write_text(json.dumps({"smollm2_jinja": smol.chat_template, "cases": chat_goldens(smol)},
                                              ensure_ascii=False, indent=1) + "\n")
