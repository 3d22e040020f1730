"""Tiny random LLaVA-NeXT (LLaVA-1.6) checkpoints and their transformers outputs.

Folders under data/llava_next/ (see the README written there):
  clip-llama/      CLIP (class token) + Llama, vision_feature_layer -2, strategy "default".
  siglip-mistral/  SigLIP (no class token) + Mistral (sliding_window null), vision_feature_layer [-2, -1], "full".
  images/          noise PNGs of four aspect ratios, each picking a different grid from the pinpoints.
golden.json + golden.f32: per checkpoint and image, the processor's pixel values and image sizes, the
expanded prompt ids (image token count), the packed image features, last-position logits and 16 greedy ids.
"""
import json
import os
import pathlib
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,  # noqa: E402
                          MistralConfig, SiglipVisionConfig)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil  # noqa: E402
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor  # noqa: E402

from gen_llava import (CLIP_MEAN, CLIP_STD, IMAGE_TOKEN, LLAVA_TEMPLATE, Arrays, clip_config, hf_messages,  # noqa: E402
                       randomize, write_tokenizer)

NEW_TOKENS = 16
TILE, PATCH = 32, 4
# [height, width] pairs in tiles of 32: each test image picks a different one.
PINPOINTS = [[32, 64], [96, 32], [64, 64], [64, 96]]
# name → (width, height): 3:1, 1:3, 1:1 and 4:3.
IMAGES = {"landscape.png": (90, 30), "portrait.png": (30, 90), "square.png": (50, 50), "four-three.png": (40, 30)}
QUESTION = "What is in the image?"
# llava-v1.6-mistral's layout: "[INST] <image>\n{text} [/INST]" (the tokenizer adds BOS).
MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% endif %}{{ ' [/INST]' }}{% else %}{{ message['content'] + '</s>' }}{% endif %}{% endfor %}")


def make_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4321)
    for name, (w, h) in IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(folder / name)
    return {name: Image.open(folder / name).convert("RGB") for name in IMAGES}


def preprocessor_json(size, crop, mean, std):
    out = {"do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
           "image_grid_pinpoints": PINPOINTS, "image_mean": mean, "image_std": std,
           "image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
           "resample": 3, "rescale_factor": 1 / 255, "size": size}
    # crop_size is the tile side even without center cropping (the processor's default is 224).
    out.update({"do_center_crop": crop, "crop_size": {"height": TILE, "width": TILE}})
    return out


def build(name, out_dir, images, arrays, seed, vision, text, feature_layer, strategy, extra_tokens, template, pre):
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    tok_config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                  "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  "model_max_length": 1024, "padding_side": "left", "processor_class": "LlavaNextProcessor",
                  "chat_template": template}
    tokenizer, _, image_id = write_tokenizer("tiny-spm", folder, tok_config, add_image_token=True)
    text.vocab_size = image_id + 1
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                             vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy,
                             projector_hidden_act="gelu", multimodal_projector_bias=True,
                             image_grid_pinpoints=PINPOINTS, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    randomize(model, seed)
    with torch.no_grad():
        # Same scale as the token embeddings, so the newline rows matter as much as the others.
        model.model.image_newline.copy_(torch.randn(text.hidden_size, generator=torch.Generator().manual_seed(seed))
                                        / text.hidden_size ** 0.5)
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    processor_json = {"image_token": IMAGE_TOKEN, "num_additional_image_tokens": extra_tokens, "patch_size": PATCH,
                      "processor_class": "LlavaNextProcessor", "vision_feature_select_strategy": strategy}
    (folder / "processor_config.json").write_text(json.dumps(processor_json, indent=2) + "\n")

    image_processor = LlavaNextImageProcessorPil(**{k: v for k, v in pre.items()
                                                    if k not in ("image_processor_type", "processor_class")})
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                                   vision_feature_select_strategy=strategy, num_additional_image_tokens=extra_tokens,
                                   chat_template=template, image_token=IMAGE_TOKEN)
    cases = []
    for image_name in IMAGES:
        messages = hf_messages([image_name], QUESTION)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt).input_ids
        inputs = processor(images=[images[image_name]], text=prompt, return_tensors="pt")
        input_ids = inputs["input_ids"]
        pixel_values, image_sizes = inputs["pixel_values"], inputs["image_sizes"]
        token_count = int((input_ids == image_id).sum())
        with torch.no_grad():
            packed = model.model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes).pooler_output
            assert len(packed) == 1 and packed[0].shape[0] == token_count, (packed[0].shape, token_count)
            mask = torch.ones_like(input_ids)
            logits = model(input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes,
                           attention_mask=mask).logits[0, -1]
            out = model.generate(input_ids, pixel_values=pixel_values, image_sizes=image_sizes, attention_mask=mask,
                                 max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, output_scores=True,
                                 return_dict_in_generate=True)
        greedy = out.sequences[0, input_ids.shape[1]:].tolist()
        assert len(greedy) == NEW_TOKENS
        margin = min((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item() for s in out.scores)
        tiles = pixel_values.shape[1] - 1
        cases.append({"image": image_name, "prompt": prompt, "prompt_ids": prompt_ids,
                      "input_ids": input_ids[0].tolist(), "image_tokens": token_count,
                      "image_size": image_sizes[0].tolist(), "tiles": tiles,
                      "pixel_values": arrays.add(pixel_values[0]), "packed_features": arrays.add(packed[0]),
                      "last_logits": logits.tolist(), "greedy_ids": greedy, "greedy_min_margin": margin})
        print(f"[llava_next] {name} {image_name}: {tiles} tiles, {token_count} image tokens, margin {margin:.4f}",
              flush=True)

    # Pre-tokenized training rows (one <image>, expanded by the trainer as at inference) and the loss
    # transformers computes for each: what the first step of a fine-tune reports.
    answer = tokenizer(" A picture of noise.", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    train_rows = []
    for case in cases:
        inputs = processor(images=[images[case["image"]]], text=case["prompt"], return_tensors="pt")
        ids = torch.cat([inputs["input_ids"], torch.tensor([answer])], dim=1)
        labels = torch.cat([torch.full_like(inputs["input_ids"], -100), torch.tensor([answer])], dim=1)
        with torch.no_grad():
            loss = model(input_ids=ids, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                         labels=labels).loss.item()
        train_rows.append({"image": case["image"], "input_ids": case["prompt_ids"] + answer,
                           "labels": [-100] * len(case["prompt_ids"]) + answer, "loss": loss})

    reloaded = LlavaNextForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), f"{name}: {k} differs after reload"
    return {"image_token_id": image_id, "vision_feature_layer": feature_layer,
            "vision_feature_select_strategy": strategy, "image_grid_pinpoints": PINPOINTS, "cases": cases,
            "train_rows": train_rows}


README = """# data/llava_next

Tiny random-weight `LlavaNextForConditionalGeneration` checkpoints (LLaVA-1.6) and what transformers computes for
them. Written by `Tests/Fixtures/gen_llava_next.py` (`generate.py llava_next`); versions in VERSION.json. Weights
are random (seeded, ~1/sqrt(fan_in)), saved with transformers 5 `save_pretrained`.

| folder | what |
| --- | --- |
| `clip-llama/` | CLIP vision (hidden 32, 3 layers, image 32, patch 4: 8x8 patches + CLS) + Llama (hidden 32, 2 layers, GQA 4/2, vocab 701); `vision_feature_layer` -2, strategy `default`; llava-v1 style chat template; processor: shortest_edge 32 + center crop 32, CLIP mean/std, `num_additional_image_tokens` 1 |
| `siglip-mistral/` | SigLIP vision (hidden 32, 2 layers, image 32, patch 4, no CLS) + Mistral (`sliding_window` null); `vision_feature_layer` [-2, -1] (projector input 64), strategy `full`; `[INST]` template; processor: size 32x32, no crop, mean/std 0.5, `num_additional_image_tokens` 0 |
| `images/` | RGB noise: `landscape.png` 90x30, `portrait.png` 30x90, `square.png` 50x50, `four-three.png` 40x30 |

Both use `image_grid_pinpoints` [[32, 64], [96, 32], [64, 64], [64, 96]] ([height, width]): the images pick grids
2x3 (landscape; unpadding drops 8 of 16 feature rows), 3x1 (portrait), 2x2 (square) and 1x2 (four-three; unpadding
drops 6 of 16 feature columns). `image_newline` is drawn at the token-embedding scale.

## golden.json / golden.f32

`golden.f32` holds raw little-endian float32 arrays referenced as `{"offset": bytes, "shape": [...]}`.
Per checkpoint: `image_token_id`, `vision_feature_layer`, `vision_feature_select_strategy`, `image_grid_pinpoints`,
`cases` (one per image): `image`, `prompt` (chat template output), `prompt_ids` (one `<image>`), `input_ids`
(`LlavaNextProcessor` output: the image token repeated `image_tokens` times), `image_size` [h, w], `tiles`,
`pixel_values` [1 + tiles, 3, 32, 32] (`LlavaNextImageProcessorPil`), `packed_features` [image_tokens, 32]
(`get_image_features(...).pooler_output[0]`: projected base features, then the unpadded grid with `image_newline`
closing each row), `last_logits` (vocab), `greedy_ids` (16, `generate(do_sample=False)`, no EOS) and
`greedy_min_margin` (smallest top-1 minus top-2 logit over those steps). `train_rows` (one per image): a
pre-tokenized row (`input_ids` with one `<image>`, `labels` -100 except the answer " A picture of noise." + EOS) and
the `loss` transformers computes for it (`labels=` on the processor-expanded ids).
"""


def generate(out_dir):
    for child in ["clip-llama", "siglip-mistral", "images"]:
        shutil.rmtree(out_dir / child, ignore_errors=True)
    images = make_images(out_dir / "images")
    arrays = Arrays()
    golden = {"arrays": {"file": "golden.f32", "dtype": "float32", "byte_order": "little", "offset_unit": "bytes"},
              "new_tokens": NEW_TOKENS, "images": {n: list(s) for n, s in IMAGES.items()}, "checkpoints": {}}

    llama = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, bos_token_id=1,
                        eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, rope_theta=10000.0)
    pre = preprocessor_json({"shortest_edge": TILE}, True, CLIP_MEAN, CLIP_STD)
    golden["checkpoints"]["clip-llama"] = build(
        "clip-llama", out_dir, images, arrays, 300, clip_config(TILE, PATCH), llama, -2, "default", 1,
        LLAVA_TEMPLATE, pre)

    siglip = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=TILE, patch_size=PATCH, hidden_act="gelu_pytorch_tanh",
                                layer_norm_eps=1e-6, vision_use_head=False)
    mistral = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, bos_token_id=1,
                            eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, rope_theta=1000000.0,
                            sliding_window=None)
    pre = preprocessor_json({"height": TILE, "width": TILE}, False, [0.5] * 3, [0.5] * 3)
    golden["checkpoints"]["siglip-mistral"] = build(
        "siglip-mistral", out_dir, images, arrays, 301, siglip, mistral, [-2, -1], "full", 0, MISTRAL_TEMPLATE, pre)

    arrays.write(out_dir / "golden.f32")
    (out_dir / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    (out_dir / "README.md").write_text(README.lstrip("\n"))
