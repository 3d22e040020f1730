"""LLaVA-1.6 (LLaVA-NeXT) as a llama.cpp GGUF pair, converted from the llava_next fixture's CLIP+Llama
checkpoint (data/llava_next/clip-llama) with llama.cpp's own converters, and transformers' outputs for it.

  tiny-next-text-f16.gguf    convert_hf_to_gguf.py --outtype f16 of the Llama half.
  tiny-next-mmproj-f16.gguf  legacy-models/convert_image_encoder_to_gguf.py --clip-model-is-vision of the
                             CLIP tower, whose config.json carries LLaVA-1.6's image_grid_pinpoints,
                             image_aspect_ratio anyres, mm_patch_merge_type spatial_unpad and the feature
                             layer, with a llava.projector holding model.mm_projector.{0,2}.* and
                             model.image_newline (what llava_surgery_v2.py extracts).
golden.json + golden.f32: per image of data/llava_next/images (four aspect ratios), transformers'
LlavaNextForConditionalGeneration on the checkpoint with every tensor the converters store as f16 rounded
to f16: pixel values, image sizes, packed image features, prompt ids (llama.cpp's tokenizer of the text
GGUF, LLaVA's vicuna prompt) expanded by the image's token count, last-position logits, 16 greedy ids.
"""
import json
import pathlib
import shutil
import sys
import tempfile

import torch
from PIL import Image
from transformers import CLIPVisionModel, LlamaForCausalLM, LlavaNextForConditionalGeneration
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

import gen_gguf_pair
import gen_llava
import gen_llava_next
from gen_gguf_pair import VENDOR, run

TEXT_FILE = "tiny-next-text-f16.gguf"
MMPROJ_FILE = "tiny-next-mmproj-f16.gguf"
# The same mmproj with the newline under the `v.` name newer converters use.
V_NEWLINE_FILE = "tiny-next-mmproj-v-newline.gguf"
QUESTION = "What is in the image?"


def convert_mmproj(model, tmp, out_path):
    vision_dir = tmp / "vision"
    clip = CLIPVisionModel(model.config.vision_config).eval()
    result = clip.load_state_dict(model.model.vision_tower.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    clip.save_pretrained(vision_dir)
    config = json.loads((vision_dir / "config.json").read_text())
    # What llama.cpp's LLaVA-1.6 instructions copy from the LLaVA config into the tower's.
    config.update(image_grid_pinpoints=model.config.image_grid_pinpoints, image_aspect_ratio="anyres",
                  mm_patch_merge_type="spatial_unpad", vision_feature_layer=model.config.vision_feature_layer)
    (vision_dir / "config.json").write_text(json.dumps(config, indent=2))
    projector = {}
    for k, v in model.model.multi_modal_projector.state_dict().items():
        projector[k.replace("linear_1.", "model.mm_projector.0.").replace("linear_2.", "model.mm_projector.2.")] = v.clone()
    projector["model.image_newline"] = model.model.image_newline.detach().clone()
    torch.save(projector, tmp / "llava.projector")
    runner = tmp / "legacy_runner.py"
    runner.write_text(gen_gguf_pair.LEGACY_RUNNER)
    out_dir = tmp / "mmproj"
    run([sys.executable, runner, VENDOR / "tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py",
         "-m", vision_dir, "--llava-projector", tmp / "llava.projector", "--output-dir", out_dir,
         "--clip-model-is-vision", "--projector-type", "mlp",
         "--image-mean", *map(str, gen_llava.CLIP_MEAN), "--image-std", *map(str, gen_llava.CLIP_STD)])
    shutil.move(out_dir / "mmproj-model-f16.gguf", out_path)


def generate(out_dir):
    gen_gguf_pair.ensure_llama_cpp()
    for child in [TEXT_FILE, MMPROJ_FILE, V_NEWLINE_FILE, "golden.json", "golden.f32"]:
        (out_dir / child).unlink(missing_ok=True)
    source = out_dir.parent / "llava_next" / "clip-llama"
    model = LlavaNextForConditionalGeneration.from_pretrained(str(source), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    gen_gguf_pair.round_to_stored(model)
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        text_dir = tmp / "text"
        text_dir.mkdir()
        for name in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(source / name, text_dir / name)
        gen_gguf_pair.convert_text(model, text_dir, out_dir / TEXT_FILE)
        convert_mmproj(model, tmp, out_dir / MMPROJ_FILE)
        sys.path.insert(0, str(VENDOR / "gguf-py"))
        rewrite = gen_gguf_pair.write_hostile(out_dir / MMPROJ_FILE, tmp, rewriter_only=True)
        rewrite(V_NEWLINE_FILE, rename={"model.image_newline": "v.image_newline"})
        shutil.move(tmp / V_NEWLINE_FILE, out_dir / V_NEWLINE_FILE)
        # Pinpoints a hostile or broken file may hold: a side out of range, an odd count, not tile multiples.
        hostile = out_dir / "hostile"
        shutil.rmtree(hostile, ignore_errors=True)
        hostile.mkdir()
        import gguf
        key, array, int32 = "clip.vision.image_grid_pinpoints", gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32
        for name, values in [("huge-side.gguf", [32, 2**31 - 1, 64, 64]), ("odd-count.gguf", [32, 64, 64]),
                             ("not-multiple.gguf", [32, 48])]:
            rewrite(name, override={key: (values, array, int32)})
            shutil.move(tmp / name, hostile / name)

    pre = json.loads((source / "preprocessor_config.json").read_text())
    image_processor = LlavaNextImageProcessorPil(**{k: v for k, v in pre.items() if k not in ("image_processor_type", "processor_class")})
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=gen_llava_next.PATCH,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   image_token=gen_llava.IMAGE_TOKEN)
    image_id = model.config.image_token_index
    import llama_cpp
    vocab = llama_cpp.Llama(str(out_dir / TEXT_FILE), vocab_only=True, verbose=False)
    arrays = gen_llava.Arrays()
    cases = []
    for name in gen_llava_next.IMAGES:
        image = Image.open(out_dir.parent / "llava_next" / "images" / name).convert("RGB")
        prompt = f"{gen_llava.VICUNA_SYSTEM} USER: {gen_llava.IMAGE_TOKEN}\n{QUESTION} ASSISTANT:"
        prompt_ids = vocab.tokenize(prompt.encode(), add_bos=True, special=True)
        inputs = processor(images=[image], text=prompt, return_tensors="pt")
        count = int((inputs["input_ids"] == image_id).sum())
        input_ids = gen_llava.expand(prompt_ids, image_id, count)
        ids = torch.tensor([input_ids])
        pixel_values, sizes = inputs["pixel_values"], inputs["image_sizes"]
        with torch.no_grad():
            packed = model.model.get_image_features(pixel_values=pixel_values, image_sizes=sizes).pooler_output[0]
            mask = torch.ones_like(ids)
            logits = model(input_ids=ids, pixel_values=pixel_values, image_sizes=sizes, attention_mask=mask).logits[0, -1]
            out = model.generate(ids, pixel_values=pixel_values, image_sizes=sizes, attention_mask=mask,
                                 max_new_tokens=gen_llava_next.NEW_TOKENS, do_sample=False, pad_token_id=0,
                                 output_scores=True, return_dict_in_generate=True)
        greedy = out.sequences[0, ids.shape[1]:].tolist()
        margin = min((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item() for s in out.scores)
        cases.append({"image": name, "prompt": prompt, "prompt_ids": prompt_ids, "input_ids": input_ids,
                      "image_tokens": count, "image_size": sizes[0].tolist(), "pixel_values": arrays.add(pixel_values[0]),
                      "packed_features": arrays.add(packed), "last_logits": logits.tolist(),
                      "top5_ids": logits.topk(5).indices.tolist(), "greedy_ids": greedy, "greedy_min_margin": margin})
        print(f"[gguf_pair_next] {name}: {count} image tokens, margin {margin:.4f}", flush=True)
    golden = {"arrays": {"file": "golden.f32", "dtype": "float32", "byte_order": "little", "offset_unit": "bytes"},
              "source": "../llava_next/clip-llama", "images": "../llava_next/images", "text": TEXT_FILE, "mmproj": MMPROJ_FILE, "mmproj_v_newline": V_NEWLINE_FILE,
              "image_token_id": image_id, "new_tokens": gen_llava_next.NEW_TOKENS,
              "image_grid_pinpoints": model.config.image_grid_pinpoints, "cases": cases}
    arrays.write(out_dir / "golden.f32")
    (out_dir / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
