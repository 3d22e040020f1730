#!/usr/bin/env python3
"""How far llama.cpp's own LLaVA path (libmtmd through llama-cpp-python's mtmd_cpp bindings) is from
transformers on the GGUF pair fixture (Tests/Fixtures/data/gguf_pair), the numbers vlmsh's tests hold
vlmsh to. For each image: llama.cpp's image embeddings (mtmd_encode_chunk) against transformers'
projector output (max abs / relative difference), and 16 greedy tokens decoded by llama.cpp
(a) with its own image embeddings and (b) with transformers' embeddings, against transformers' tokens.
The prompt ids are the goldens' (the text GGUF's tokenization), fed around the image rows.

--explain rebuilds the tower from the mmproj file in torch and applies llama.cpp's graph differences to
transformers' pixels one by one: it runs one stored layer fewer than the file holds (hidden state 1 of
2 here, transformers' -3 instead of -2), it concatenates the class embedding after the patch embeddings
(so positions are shifted and the rows it keeps are patches 1..15 plus the class token), its projector
uses the tanh approximation of gelu, and it pads non-square images to a square instead of
center-cropping them (the last is not modelled, so only the square image matches closely).

--next measures the LLaVA-1.6 pair instead (Tests/Fixtures/data/gguf_pair_next, any-resolution images):
there llama.cpp's image may take a different number of rows than transformers' packing.

Usage: ~/.vlmsh/venv/bin/python bench/llama_cpp_mmproj.py [--next] [--json] [--embeddings OUT.json] [--explain]
(--embeddings also writes llama.cpp's image embeddings per image.)
"""
import ctypes
import json
import pathlib
import sys

import numpy as np
from PIL import Image

import llama_cpp
from llama_cpp import mtmd_cpp as mtmd

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "Tests/Fixtures/data" / ("gguf_pair_next" if "--next" in sys.argv else "gguf_pair")


def golden_array(raw, ref):
    n = int(np.prod(ref["shape"]))
    return np.frombuffer(raw, "<f4", n, ref["offset"]).reshape(ref["shape"])


def decode(ctx, n_embd, pos, tokens=None, embd=None, want_logits=True):
    """One llama_decode of token ids or embedding rows at positions pos..., logits for the last row."""
    n = len(tokens) if tokens is not None else embd.shape[0]
    batch = llama_cpp.llama_batch_init(n, n_embd if embd is not None else 0, 1)
    try:
        batch.n_tokens = n
        for i in range(n):
            if tokens is not None:
                batch.token[i] = tokens[i]
            else:
                for j in range(n_embd):
                    batch.embd[i * n_embd + j] = float(embd[i, j])
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = want_logits and i == n - 1
        rc = llama_cpp.llama_decode(ctx, batch)
        assert rc == 0, f"llama_decode returned {rc}"
    finally:
        llama_cpp.llama_batch_free(batch)
    return pos + n


def greedy(llm, prompt_ids, image_id, image_rows, steps):
    ctx = llm._ctx.ctx
    n_embd = llm.n_embd()
    n_vocab = llm.n_vocab()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    at = prompt_ids.index(image_id)
    pos = decode(ctx, n_embd, 0, tokens=prompt_ids[:at], want_logits=False)
    pos = decode(ctx, n_embd, pos, embd=image_rows, want_logits=False)
    pos = decode(ctx, n_embd, pos, tokens=prompt_ids[at + 1:])
    out = []
    last = None
    for step in range(steps):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
        if step == 0:
            last = logits
        token = int(np.argmax(logits))
        out.append(token)
        pos = decode(ctx, n_embd, pos, tokens=[token])
    return out, last


def encode_image(mctx, n_embd, path):
    """llama.cpp's image rows for the picture at `path`: libmtmd tokenizes its default marker with
    the bitmap and encodes every image chunk in order (LLaVA-1.6 images come as several), rows
    concatenated."""
    img = Image.open(path).convert("RGB")
    pixels = np.asarray(img, dtype=np.uint8).copy()
    bitmap = mtmd.mtmd_bitmap_init(img.width, img.height, (ctypes.c_uint8 * pixels.size).from_buffer(pixels))
    chunks = mtmd.mtmd_input_chunks_init()
    text = mtmd.mtmd_input_text()
    text.text = mtmd.mtmd_default_marker()
    text.text_len = len(text.text)
    text.add_special = False
    text.parse_special = True
    assert mtmd.mtmd_tokenize(mctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
    parts = []
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(chunk) != 1:
            continue
        rows = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        assert mtmd.mtmd_encode_chunk(mctx, chunk) == 0
        parts.append(np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(mctx), shape=(rows * n_embd,)).copy().reshape(rows, n_embd))
    mtmd.mtmd_input_chunks_free(chunks)
    mtmd.mtmd_bitmap_free(bitmap)
    return np.concatenate(parts)


def main():
    golden = json.loads((DATA / "golden.json").read_text())
    raw = (DATA / "golden.f32").read_bytes()
    llm = llama_cpp.Llama(str(DATA / golden["text"]), n_ctx=1024, n_batch=1024, verbose=False)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = False
    params.print_timings = False
    params.n_threads = 2
    params.warmup = False
    mctx = mtmd.mtmd_init_from_file(str(DATA / golden["mmproj"]).encode(), llm._model.model, params)
    assert mctx, "mtmd_init_from_file failed"
    image_id = golden["image_token_id"]
    report, dumped = [], []
    for case in golden["cases"]:
        folder = golden["images"] if isinstance(golden.get("images"), str) else "images"
        embd = encode_image(mctx, llm.n_embd(), DATA / folder / case["image"])
        n_tokens = embd.shape[0]
        ref = golden_array(raw, case["packed_features"]) if "packed_features" in case else golden_array(raw, case["projector_output"])[0]
        if embd.shape != ref.shape:
            report.append({"image": case["image"], "image_tokens": n_tokens, "transformers_image_tokens": ref.shape[0],
                           "greedy_match_with_llama_cpp_embeddings":
                               greedy(llm, case["prompt_ids"], image_id, embd, golden["new_tokens"])[0] == case["greedy_ids"],
                           "greedy_match_with_transformers_embeddings":
                               greedy(llm, case["prompt_ids"], image_id, ref, golden["new_tokens"])[0] == case["greedy_ids"]})
            continue
        diff = np.abs(embd - ref)
        ours_tokens, _ = greedy(llm, case["prompt_ids"], image_id, embd, golden["new_tokens"])
        ref_tokens, ref_logits = greedy(llm, case["prompt_ids"], image_id, ref, golden["new_tokens"])
        logit_diff = float(np.abs(ref_logits - np.array(case["last_logits"], dtype=np.float32)).max())
        row = {"image": case["image"], "image_tokens": n_tokens,
               "embeddings_max_abs_diff": float(diff.max()),
               "embeddings_max_rel_diff": float(diff.max() / np.abs(ref).max()),
               "embeddings_mean_abs_value": float(np.abs(ref).mean()),
               "greedy_match_with_llama_cpp_embeddings": ours_tokens == case["greedy_ids"],
               "greedy_match_with_transformers_embeddings": ref_tokens == case["greedy_ids"],
               "decoder_last_logits_max_abs_diff_with_transformers_embeddings": logit_diff}
        report.append(row)
        dumped.append({"image": case["image"], "embd": embd.tolist()})
    mtmd.mtmd_free(mctx)
    if "--embeddings" in sys.argv:
        pathlib.Path(sys.argv[sys.argv.index("--embeddings") + 1]).write_text(json.dumps(dumped))
    if "--json" in sys.argv:
        print(json.dumps(report, indent=1))
    else:
        for r in report:
            if "transformers_image_tokens" in r:
                print(f"{r['image']:14} llama.cpp makes {r['image_tokens']} image rows, transformers {r['transformers_image_tokens']}; "
                      f"greedy matches: llama.cpp embeddings {r['greedy_match_with_llama_cpp_embeddings']}, "
                      f"transformers embeddings {r['greedy_match_with_transformers_embeddings']}")
                continue
            print(f"{r['image']:14} embeddings max|d| {r['embeddings_max_abs_diff']:.4f} "
                  f"(rel {r['embeddings_max_rel_diff']:.3f}, mean|x| {r['embeddings_mean_abs_value']:.3f}); greedy matches: "
                  f"llama.cpp embeddings {r['greedy_match_with_llama_cpp_embeddings']}, transformers embeddings "
                  f"{r['greedy_match_with_transformers_embeddings']} (last logits max|d| "
                  f"{r['decoder_last_logits_max_abs_diff_with_transformers_embeddings']:.2e})")
    if "--explain" in sys.argv:
        explain(golden, raw, dumped)


def explain(golden, raw, dumped):
    import gguf
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel
    reader = gguf.GGUFReader(str(DATA / golden["mmproj"]))
    t = {x.name: torch.tensor(np.array(x.data, dtype=np.float32)).reshape([int(d) for d in reversed(x.shape)])
         for x in reader.tensors}
    field = lambda k: reader.fields[k].contents()
    layers = field("clip.vision.block_count")
    cfg = CLIPVisionConfig(hidden_size=field("clip.vision.embedding_length"),
                           intermediate_size=field("clip.vision.feed_forward_length"), num_hidden_layers=layers,
                           num_attention_heads=field("clip.vision.attention.head_count"),
                           image_size=field("clip.vision.image_size"), patch_size=field("clip.vision.patch_size"),
                           hidden_act="quick_gelu", layer_norm_eps=field("clip.vision.attention.layer_norm_epsilon"))
    tower = CLIPVisionModel(cfg).eval()
    state = {"embeddings.class_embedding": t["v.class_embd"], "embeddings.patch_embedding.weight": t["v.patch_embd.weight"],
             "embeddings.position_embedding.weight": t["v.position_embd.weight"],
             "pre_layrnorm.weight": t["v.pre_ln.weight"], "pre_layrnorm.bias": t["v.pre_ln.bias"]}
    names = [("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
             ("attn_out", "self_attn.out_proj"), ("ln1", "layer_norm1"), ("ln2", "layer_norm2"),
             ("ffn_down", "mlp.fc1"), ("ffn_up", "mlp.fc2")]   # the legacy converter's fc1/fc2 names
    for i in range(layers):
        for g, h in names:
            for kind in ("weight", "bias"):
                state[f"encoder.layers.{i}.{h}.{kind}"] = t[f"v.blk.{i}.{g}.{kind}"]
    tower.load_state_dict(state, strict=False)

    def project(x, tanh=False):
        h = torch.nn.functional.gelu(x @ t["mm.0.weight"].T + t["mm.0.bias"], approximate="tanh" if tanh else "none")
        return h @ t["mm.2.weight"].T + t["mm.2.bias"]

    rows = []
    with torch.no_grad():
        for case, ll in zip(golden["cases"], dumped):
            pv = torch.tensor(golden_array(raw, case["pixel_values"]).copy())
            ref = torch.tensor(golden_array(raw, case["projector_output"])[0].copy())
            states = tower(pv, output_hidden_states=True).hidden_states
            e = tower.embeddings
            patches = e.patch_embedding(pv).flatten(2).transpose(1, 2)
            x = torch.cat([patches, e.class_embedding.view(1, 1, -1)], 1) + e.position_embedding.weight[None]
            x = tower.pre_layrnorm(x)
            for layer in tower.encoder.layers[:layers - 1]:
                out = layer(x, None)
                x = out[0] if isinstance(out, tuple) else out
            emulated = project(x[0, 1:], tanh=True)
            d = lambda a, b: float((a - b).abs().max())
            rows.append({"image": case["image"], "transformers_from_file": d(project(states[layers][0, 1:]), ref),
                         "one_layer_fewer": d(project(states[layers - 1][0, 1:]), ref),
                         "plus_class_token_last_and_tanh_gelu": d(emulated, ref),
                         "llama_cpp_vs_that_emulation": d(torch.tensor(np.array(ll["embd"], dtype=np.float32)), emulated)})
    for r in rows:
        print(f"{r['image']:14} max|d| from transformers: file re-read {r['transformers_from_file']:.2e}, one layer fewer "
              f"{r['one_layer_fewer']:.3f}, + class token last + tanh gelu {r['plus_class_token_last_and_tanh_gelu']:.3f}; "
              f"llama.cpp vs that emulation {r['llama_cpp_vs_that_emulation']:.4f}")


if __name__ == "__main__":
    main()
