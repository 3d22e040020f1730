"""Tiny random Llama-family text models (HF folders) and their transformers outputs.

Covers the decoder variants the Swift engine supports: Llama (tied, default RoPE), Llama with
llama3 and linear RoPE scaling (untied), Mistral, Qwen2 (q/k/v bias), one saved in bf16 and sharded.
golden.json: for each variant, prompt ids, last-position logits and a greedy continuation.
"""
import json

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)

VARIANTS = {
    "llama": (LlamaForCausalLM, LlamaConfig(**COMMON, tie_word_embeddings=True, rope_theta=10000.0)),
    "llama3-rope": (LlamaForCausalLM, LlamaConfig(**COMMON, tie_word_embeddings=False, rope_theta=500000.0,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "linear-rope": (LlamaForCausalLM, LlamaConfig(**COMMON, tie_word_embeddings=False,
                    rope_scaling={"rope_type": "linear", "factor": 4.0})),
    "mistral": (MistralForCausalLM, MistralConfig(**COMMON, tie_word_embeddings=False, sliding_window=None)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, tie_word_embeddings=True)),
}


def generate(out_dir):
    golden = {}
    for i, (name, (cls, config)) in enumerate(VARIANTS.items()):
        torch.manual_seed(100 + i)
        model = cls(config).eval()
        # Random init leaves biases at zero; make Qwen2's q/k/v biases matter.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith(".bias") or "norm" in n:
                    p.add_(torch.randn_like(p) * 0.1)
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        sharded = name == "mistral"
        if sharded:
            # Module.to converts in place: save in bf16, then compute in f32 on the values the file holds.
            model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="20KB")
            model.to(torch.float32)
        else:
            model.save_pretrained(folder)
        gen = torch.Generator().manual_seed(7 + i)
        ids = torch.randint(3, config.vocab_size, (1, 12), generator=gen)
        with torch.no_grad():
            logits = model(ids).logits[0, -1].tolist()
            out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, attention_mask=torch.ones_like(ids))
        golden[name] = {"prompt_ids": ids[0].tolist(), "last_logits": logits,
                        "greedy_ids": out[0, ids.shape[1]:].tolist(), "bf16_sharded": sharded}
        (folder / "generation_config.json").unlink(missing_ok=True)
        if name == "linear-rope":
            # Users also have configs written by transformers 4.x: rope_theta + rope_scaling.
            cfg = json.loads((folder / "config.json").read_text())
            params = cfg.pop("rope_parameters")
            cfg["rope_theta"] = params.pop("rope_theta")
            cfg["rope_scaling"] = {"type": params["rope_type"], "factor": params["factor"]}
            (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out_dir / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
