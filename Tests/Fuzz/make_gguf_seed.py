#!/usr/bin/env python3
"""Writes Tests/Fuzz/corpus/gguf/tiny-llama.gguf: a whole Llama model in miniature (1 layer,
hidden 32, a 40-token SentencePiece vocabulary, f32 and q8_0 tensors), so the gguf fuzz target
starts from a file that loads. Run with the reference venv: `$VLMSH_HOME/venv/bin/python`."""
import os

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

out = os.path.join(os.path.dirname(__file__), "corpus", "gguf", "tiny-llama.gguf")
rng = np.random.default_rng(0)
hidden, ff, heads, vocab = 32, 64, 2, 40
w = GGUFWriter(out, "llama")
w.add_block_count(1)
w.add_context_length(64)
w.add_embedding_length(hidden)
w.add_feed_forward_length(ff)
w.add_head_count(heads)
w.add_head_count_kv(heads)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_freq_base(10000.0)
w.add_tokenizer_model("llama")
tokens = ["<unk>", "<s>", "</s>"] + ["\u2581" + c for c in "abcdefghijklmnopq"] + list("abcdefghijklmnopqrst")
w.add_token_list(tokens)
w.add_token_scores([-float(i) for i in range(vocab)])
w.add_token_types([2, 3, 3] + [1] * (vocab - 3))
w.add_bos_token_id(1)
w.add_eos_token_id(2)


def tensor(name, shape, q8=False):
    data = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    if q8:
        w.add_tensor(name, quantize(data, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor(name, data)


tensor("token_embd.weight", (vocab, hidden))
tensor("output_norm.weight", (hidden,))
tensor("blk.0.attn_norm.weight", (hidden,))
tensor("blk.0.ffn_norm.weight", (hidden,))
for name in ["attn_q", "attn_k", "attn_v", "attn_output"]:
    tensor(f"blk.0.{name}.weight", (hidden, hidden), q8=name == "attn_q")
tensor("blk.0.ffn_gate.weight", (ff, hidden))
tensor("blk.0.ffn_up.weight", (ff, hidden))
tensor("blk.0.ffn_down.weight", (hidden, ff))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(out, os.path.getsize(out), "bytes")
