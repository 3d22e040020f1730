"""Tiny random LLaVA checkpoints in the layouts users download, and their transformers outputs.

Folders under data/llava/ (see the README written there):
  clip-llama/         CLIP (quick_gelu) + Llama, feature layer -2, "default" (CLS dropped); llava-hf hub layout.
  siglip-qwen2/       SigLIP (no CLS, no head) + Qwen2 (tied), feature layer -1, "full"; the layout
                      transformers' save_pretrained writes.
  clip-llama-layers/  like clip-llama but feature layers [-2, -1] concatenated; float16, sharded, hub layout.
  original-llava/     the original LLaVA repo layout (llava_llama config, model.mm_projector.{0,2}), with the
                      CLIP tower in original-llava/clip-vision/ (mm_vision_tower "./clip-vision").
  images/             small synthetic PNGs (square, wide, tall, grayscale).
golden.json + golden.f32: per checkpoint and image(s), the prompt and its ids, pixel values, selected vision
features, projector output, last-position logits and a 12-token greedy continuation, all from transformers.
"""
import copy
import json
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import AddedToken, Tokenizer  # noqa: E402
from transformers import (CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlavaConfig,  # noqa: E402
                          LlavaForConditionalGeneration, PreTrainedTokenizerFast, Qwen2Config,
                          SiglipVisionConfig)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
TOKENIZERS = HERE / "data" / "tokenizers"
NEW_TOKENS = 12
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200  # original LLaVA's placeholder id (llava/constants.py)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# llava-hf's llava-1.5 template (vicuna_v1 style), also accepting plain-string content.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# ChatML as llava-onevision-qwen2 renders it: images first in the user turn, each followed by a newline.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Original LLaVA's conv_llava_v1 (vicuna_v1): system, then "USER: ... ASSISTANT:" joined by " ".
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")

IMAGES = ["square.png", "wide.png", "tall.png", "gray.png"]
QUESTIONS = {"square.png": "What is in the image?", "wide.png": "Describe the picture.",
             "tall.png": "What colors do you see?", "gray.png": "Is this a photo?"}


# ---------------------------------------------------------------------------------------------- images

def make_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)

    def gradient(w, h):
        x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
        y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
        noise = rng.integers(0, 40, (h, w, 3))
        rgb = np.stack([x, y, 255 - (x + y) / 2], -1) + noise
        return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")

    square = gradient(40, 40)
    d = ImageDraw.Draw(square)
    d.ellipse([8, 8, 30, 30], fill=(220, 30, 30))
    d.rectangle([24, 2, 38, 14], fill=(20, 200, 60))
    wide = gradient(64, 24)
    d = ImageDraw.Draw(wide)
    d.rectangle([4, 4, 20, 20], fill=(250, 250, 0))
    d.line([0, 23, 63, 0], fill=(0, 0, 255), width=3)
    tall = gradient(20, 48)
    d = ImageDraw.Draw(tall)
    d.ellipse([2, 30, 18, 46], fill=(128, 0, 200))
    d.rectangle([0, 0, 19, 6], fill=(255, 255, 255))
    gray = Image.fromarray(((np.add.outer(np.arange(30), np.arange(30)) * 4) % 256).astype(np.uint8), "L")
    d = ImageDraw.Draw(gray)
    d.rectangle([10, 10, 19, 19], fill=255)
    for name, img in zip(IMAGES, [square, wide, tall, gray]):
        img.save(folder / name)
    return {name: Image.open(folder / name) for name in IMAGES}


# ------------------------------------------------------------------------------------------ tokenizers

def write_tokenizer(src, folder, config, add_image_token):
    """Copies data/tokenizers/<src>, optionally with an added special <image>; returns (hf tokenizer, image id)."""
    tk = Tokenizer.from_file(str(TOKENIZERS / src / "tokenizer.json"))
    if add_image_token:
        tk.add_special_tokens([AddedToken(IMAGE_TOKEN, single_word=False, lstrip=False, rstrip=False,
                                          normalized=False, special=True)])
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **{
        k: v for k, v in config.items() if k in ("bos_token", "eos_token", "unk_token", "pad_token")})
    if "chat_template" in config:
        hf.chat_template = config["chat_template"]
    image_id = tk.token_to_id(IMAGE_TOKEN) if add_image_token else None
    return hf, tk, image_id


def tokenizer_image_token(prompt, tokenizer):
    """llava/mm_utils.py tokenizer_image_token: chunks tokenized separately, joined with IMAGE_TOKEN_INDEX."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    sep = [IMAGE_TOKEN_INDEX] * (offset + 1)
    joined = [e for sub in zip(chunks, [sep] * len(chunks)) for e in sub][:-1]
    for x in joined:
        ids.extend(x[offset:])
    return ids


# ------------------------------------------------------------------------------------------------ models

def randomize(model, seed):
    """Default init is too small to give distinct outputs; scale weights to ~1/sqrt(fan_in), jitter norms/biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("class_embedding"):
                p.copy_(noise)
            else:
                p.copy_(0.1 * noise)


def clip_config(image_size, patch_size, layers=3):
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                            image_size=image_size, patch_size=patch_size, hidden_act="quick_gelu",
                            projection_dim=32, layer_norm_eps=1e-5)


def llama_config(vocab):
    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       tie_word_embeddings=False, rope_theta=10000.0)


def save_hub_layout(model, folder, dtype=None, max_shard_size=None):
    """save_pretrained, then rename keys to the llava-hf hub layout (language_model.model.*,
    language_model.lm_head.weight, vision_tower.vision_model.*, multi_modal_projector.*)."""
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    if dtype:
        # Save a converted copy, and round only the parameters of the golden model: Module.to would also
        # round float buffers (RoPE inv_freq), which a loader recomputes in full precision.
        copy.deepcopy(model).to(dtype).save_pretrained(folder, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(dtype).to(torch.float32))
    else:
        model.save_pretrained(folder, **kwargs)

    def hub(key):
        for old, new in [("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                         ("model.multi_modal_projector.", "multi_modal_projector."),
                         ("model.vision_tower.", "vision_tower.vision_model.")]:
            if key.startswith(old):
                return new + key[len(old):]
        if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
            return "vision_tower.vision_model." + key[len("vision_tower."):]
        return key

    rename_safetensors(folder, hub)


def rename_safetensors(folder, fn, drop=lambda k: False, transform=lambda k, t: t):
    files = sorted(folder.glob("*.safetensors"))
    weight_map = {}
    for f in files:
        tensors = {}
        with safe_open(str(f), "pt") as sf:
            meta = sf.metadata() or {"format": "pt"}
            for k in sf.keys():
                if drop(k):
                    continue
                tensors[fn(k)] = transform(k, sf.get_tensor(k)).contiguous()
        save_file(tensors, str(f), metadata=meta)
        weight_map.update({k: f.name for k in tensors})
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = dict(sorted(weight_map.items()))
        index.write_text(json.dumps(data, indent=2) + "\n")


def key_prefixes(folder, depth=3):
    keys = []
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            keys += list(sf.keys())
    out = sorted({".".join(k.split(".")[:depth]) for k in keys})
    return out, len(keys)


# ----------------------------------------------------------------------------------------------- goldens

class Arrays:
    """golden.f32: raw little-endian float32 arrays, indexed from golden.json by byte offset and shape."""

    def __init__(self):
        self.chunks, self.size = [], 0

    def add(self, tensor):
        a = np.ascontiguousarray(tensor.detach().to(torch.float32).cpu().numpy(), dtype="<f4")
        ref = {"offset": self.size, "shape": list(a.shape)}
        self.chunks.append(a.tobytes())
        self.size += a.nbytes
        return ref

    def write(self, path):
        path.write_bytes(b"".join(self.chunks))


def run_case(model, arrays, pixel_values, input_ids, image_token_id, logit_limit=None, suppress=None):
    cfg = model.config
    with torch.no_grad():
        vis = model.model.vision_tower(pixel_values, output_hidden_states=True)
        layers = cfg.vision_feature_layer if isinstance(cfg.vision_feature_layer, list) else [cfg.vision_feature_layer]
        feats = [vis.hidden_states[i] for i in layers]
        if cfg.vision_feature_select_strategy == "default":
            feats = [f[:, 1:] for f in feats]
        selected = torch.cat(feats, dim=-1)
        projected = model.model.multi_modal_projector(selected)
        # Cross-check against transformers' own get_image_features.
        ref = model.model.get_image_features(pixel_values=pixel_values).pooler_output
        assert torch.allclose(torch.stack(list(ref)), projected, atol=1e-6)
        ids = torch.tensor([input_ids])
        assert int((ids == image_token_id).sum()) == projected.shape[0] * projected.shape[1]
        mask = torch.ones_like(ids)
        logits = model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask).logits[0, -1]
        gen_kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, attention_mask=mask)
        if suppress is not None:
            gen_kwargs["suppress_tokens"] = suppress
        out = model.generate(ids, pixel_values=pixel_values, output_scores=True, return_dict_in_generate=True,
                             **gen_kwargs)
    greedy = out.sequences[0, ids.shape[1]:].tolist()
    # Smallest top-1 minus top-2 score over the greedy steps: how close the continuation came to a tie.
    margin = min((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item() for s in out.scores)
    assert len(greedy) == NEW_TOKENS, greedy
    if logit_limit is not None:
        logits = logits[:logit_limit]
    return {"pixel_values": arrays.add(pixel_values), "vision_features": arrays.add(selected),
            "projector_output": arrays.add(projected), "last_logits": logits.tolist(), "greedy_ids": greedy,
            "greedy_min_margin": margin}


def expand(ids, image_token_id, count):
    out = []
    for i in ids:
        out.extend([image_token_id] * count if i == image_token_id else [i])
    return out


def hf_messages(names, question):
    return [{"role": "user", "content": [{"type": "image"} for _ in names] + [{"type": "text", "text": question}]}]


def processor_config(patch_size, strategy, extra):
    return {"image_token": IMAGE_TOKEN, "num_additional_image_tokens": extra, "patch_size": patch_size,
            "processor_class": "LlavaProcessor", "vision_feature_select_strategy": strategy}


def clip_preprocessor_json(size, processor_class="LlavaProcessor"):
    return {"crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "processor_class": processor_class,
            "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": size}}


def clip_processor(size):
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_center_crop=True)


def clip_llama_family(name, out_dir, images, arrays, seed, feature_layer, f16_sharded):
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    tok_config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                  "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  "model_max_length": 512, "padding_side": "left", "processor_class": "LlavaProcessor",
                  "chat_template": LLAVA_TEMPLATE}
    tokenizer, _, image_id = write_tokenizer("tiny-spm", folder, tok_config, add_image_token=True)
    config = LlavaConfig(vision_config=clip_config(32, 8), text_config=llama_config(image_id + 1),
                         image_token_index=image_id, vision_feature_layer=feature_layer,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         multimodal_projector_bias=True, image_seq_length=16, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    randomize(model, seed)
    model.generation_config.eos_token_id = None
    if f16_sharded:
        save_hub_layout(model, folder, dtype=torch.float16, max_shard_size="100KB")
    else:
        save_hub_layout(model, folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_json(32), indent=2) + "\n")
    (folder / "processor_config.json").write_text(json.dumps(processor_config(8, "default", 1), indent=2) + "\n")
    processor = clip_processor(32)
    tokens_per_image = (32 // 8) ** 2
    cases = []
    groups = [[n] for n in IMAGES] + ([["square.png", "wide.png"]] if name == "clip-llama" else [])
    for names in groups:
        question = QUESTIONS[names[0]] if len(names) == 1 else "What is different between the two images?"
        messages = hf_messages(names, question)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt).input_ids
        input_ids = expand(prompt_ids, image_id, tokens_per_image)
        pixel_values = processor([images[n] for n in names], return_tensors="pt")["pixel_values"]
        case = {"images": names, "messages": messages, "prompt": prompt, "prompt_ids": prompt_ids,
                "input_ids": input_ids}
        case.update(run_case(model, arrays, pixel_values, input_ids, image_id))
        cases.append(case)
    return folder, model, {
        "layout": "llava-hf", "dtype": "float16" if f16_sharded else "float32", "sharded": f16_sharded,
        "image_token": IMAGE_TOKEN, "image_token_id": image_id, "image_tokens_per_image": tokens_per_image,
        "vision_feature_layer": feature_layer, "vision_feature_select_strategy": "default",
        "image_processor": "CLIPImageProcessorPil (shortest_edge 32, center crop 32, bicubic, CLIP mean/std)",
        "cases": cases}


def siglip_qwen2(out_dir, images, arrays, seed):
    folder = out_dir / "siglip-qwen2"
    folder.mkdir(parents=True, exist_ok=True)
    tok_config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                  "add_bos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": 512,
                  "padding_side": "left", "processor_class": "LlavaProcessor", "chat_template": CHATML_TEMPLATE}
    tokenizer, _, image_id = write_tokenizer("tiny-bpe-qwen2", folder, tok_config, add_image_token=True)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=28, patch_size=7, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                                vision_use_head=False)
    text = Qwen2Config(vocab_size=image_id + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=2, pad_token_id=0,
                       tie_word_embeddings=True, rope_theta=1000000.0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         vision_feature_layer=-1, vision_feature_select_strategy="full",
                         projector_hidden_act="gelu", multimodal_projector_bias=True, image_seq_length=16)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    randomize(model, seed)
    model.tie_weights()
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    pre = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
           "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
           "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 1 / 255,
           "size": {"height": 28, "width": 28}}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    (folder / "processor_config.json").write_text(json.dumps(processor_config(7, "full", 0), indent=2) + "\n")
    processor = SiglipImageProcessorPil(size={"height": 28, "width": 28}, resample=3,
                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    tokens_per_image = (28 // 7) ** 2
    cases = []
    for n in IMAGES:
        messages = hf_messages([n], QUESTIONS[n])
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt).input_ids
        input_ids = expand(prompt_ids, image_id, tokens_per_image)
        pixel_values = processor([images[n]], return_tensors="pt")["pixel_values"]
        case = {"images": [n], "messages": messages, "prompt": prompt, "prompt_ids": prompt_ids, "input_ids": input_ids}
        case.update(run_case(model, arrays, pixel_values, input_ids, image_id))
        cases.append(case)
    return folder, model, {
        "layout": "transformers-5.24-save_pretrained", "dtype": "float32", "sharded": False,
        "tied_embeddings": True, "image_token": IMAGE_TOKEN, "image_token_id": image_id,
        "image_tokens_per_image": tokens_per_image, "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "image_processor": "SiglipImageProcessorPil (resize to 28x28, bicubic, mean/std 0.5)", "cases": cases}


def expand2square(img, background):
    """llava/mm_utils.py expand2square: pad the short side with the background colour, image centred."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    result = Image.new(img.mode, (side, side), background)
    result.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return result


def original_llava(out_dir, images, arrays, seed):
    folder = out_dir / "original-llava"
    folder.mkdir(parents=True, exist_ok=True)
    tok_config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                  "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  "legacy": False, "model_max_length": 512, "padding_side": "right"}
    tokenizer, tk, _ = write_tokenizer("tiny-spm", folder, tok_config, add_image_token=False)
    vocab = tk.get_vocab_size()
    twin_image_id = vocab  # the HF twin's extra <image> row; absent from the original checkpoint
    vision = clip_config(28, 14)
    text = llama_config(vocab + 1)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=twin_image_id,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", multimodal_projector_bias=True, image_seq_length=4)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    randomize(model, seed)
    model.generation_config.eos_token_id = None

    # Language model + projector, named as LlavaLlamaForCausalLM saves them; vocab rows cut back to the tokenizer.
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.language_model."):
            key = "model." + k[len("model.language_model."):]
        elif k == "lm_head.weight":
            key = k
        elif k.startswith("model.multi_modal_projector."):
            key = k.replace("model.multi_modal_projector.linear_1.", "model.mm_projector.0.") \
                   .replace("model.multi_modal_projector.linear_2.", "model.mm_projector.2.")
        else:
            continue
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            v = v[:vocab]
        state[key] = v.detach().clone().contiguous()
    save_file(dict(sorted(state.items())), str(folder / "model.safetensors"), metadata={"format": "pt"})
    t = text
    llava_cfg = {
        "_name_or_path": "./checkpoints/llava-tiny", "architectures": ["LlavaLlamaForCausalLM"],
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False, "hidden_act": "silu", "hidden_size": t.hidden_size,
        "image_aspect_ratio": "pad", "initializer_range": 0.02, "intermediate_size": t.intermediate_size,
        "max_position_embeddings": t.max_position_embeddings, "mm_hidden_size": vision.hidden_size,
        "mm_patch_merge_type": "flat", "mm_projector_lr": None, "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": "./clip-vision", "model_type": "llava_llama",
        "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads, "pad_token_id": 0, "pretraining_tp": 1,
        "rms_norm_eps": t.rms_norm_eps, "rope_scaling": None, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "tokenizer_model_max_length": 512, "tokenizer_padding_side": "right",
        "torch_dtype": "float32", "transformers_version": "4.37.2", "tune_mm_mlp_adapter": False,
        "use_cache": True, "use_mm_proj": True, "vocab_size": vocab}
    (folder / "config.json").write_text(json.dumps(llava_cfg, indent=2) + "\n")

    # The CLIP tower as its own CLIPVisionModel folder (openai/clip-vit-* style, keys vision_model.*).
    clip_dir = folder / "clip-vision"
    clip = CLIPVisionModel(vision).eval()
    missing = clip.load_state_dict(model.model.vision_tower.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys
    clip.save_pretrained(clip_dir)
    rename_safetensors(clip_dir, lambda k: k if k.startswith("vision_model.") else "vision_model." + k)
    (clip_dir / "preprocessor_config.json").write_text(
        json.dumps(clip_preprocessor_json(28, "CLIPProcessor"), indent=2) + "\n")

    processor = clip_processor(28)
    background = tuple(int(x * 255) for x in CLIP_MEAN)
    tokens_per_image = (28 // 14) ** 2
    cases = []
    for n in IMAGES:
        question = QUESTIONS[n]
        prompt = f"{VICUNA_SYSTEM} USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"
        prompt_ids = tokenizer_image_token(prompt, tokenizer)
        twin_prompt = [twin_image_id if i == IMAGE_TOKEN_INDEX else i for i in prompt_ids]
        input_ids = expand(twin_prompt, twin_image_id, tokens_per_image)
        padded = expand2square(images[n].convert("RGB"), background)
        pixel_values = processor([padded], return_tensors="pt")["pixel_values"]
        case = {"images": [n], "prompt": prompt, "prompt_ids": prompt_ids, "input_ids": input_ids}
        case.update(run_case(model, arrays, pixel_values, input_ids, twin_image_id, logit_limit=vocab,
                             suppress=[twin_image_id]))
        cases.append(case)
    return folder, model, {
        "layout": "original-llava", "dtype": "float32", "sharded": False, "image_token_index": IMAGE_TOKEN_INDEX,
        "twin_image_token_id": twin_image_id, "image_tokens_per_image": tokens_per_image,
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "image_processor": "image.convert('RGB'), expand2square with the CLIP mean colour "
                           f"{list(background)}, then CLIPImageProcessorPil (shortest_edge 28, crop 28, bicubic)",
        "note": "prompt_ids are LLaVA's tokenizer_image_token output (-200 at the image); input_ids are the HF "
                f"twin's ids (-200 -> {twin_image_id}, expanded to {tokens_per_image}); goldens come from the twin "
                f"LlavaForConditionalGeneration with vocab {vocab + 1}, last_logits cut to the first {vocab} and "
                f"token {twin_image_id} suppressed in greedy decoding",
        "cases": cases}


README = """# data/llava

Tiny random-weight LLaVA checkpoints and the outputs transformers computes for them. Written by
`Tests/Fixtures/gen_llava.py` (`generate.py llava`); versions in VERSION.json. All weights are random
(seeded), rescaled to ~1/sqrt(fan_in) so outputs differ per image; nothing comes from a hub.

## Folders

| folder | what | weights |
| --- | --- | --- |
| `clip-llama/` | `LlavaForConditionalGeneration`: CLIP vision (hidden 32, 3 layers, image 32, patch 8, quick_gelu) + Llama (hidden 32, 2 layers, GQA 4/2, vocab 701, untied); `vision_feature_layer` -2, strategy `default` (CLS dropped, 16 tokens/image); projector gelu with bias | llava-hf hub layout, float32, `model.safetensors` |
| `siglip-qwen2/` | SigLIP vision (hidden 32, 2 layers, image 28, patch 7, gelu_pytorch_tanh, no CLS, `vision_use_head` false) + Qwen2 (hidden 32, 2 layers, q/k/v bias, vocab 601, **tied** embeddings); `vision_feature_layer` -1, strategy `full` (16 tokens/image) | layout written by transformers 5.24 `save_pretrained`, float32 |
| `clip-llama-layers/` | like `clip-llama` (other seed) with `vision_feature_layer` [-2, -1]: both layers' patch features concatenated along hidden (64 = 2x32) before the projector | llava-hf hub layout, **float16**, 3 shards + `model.safetensors.index.json` |
| `original-llava/` | original LLaVA repo (`LlavaLlamaForCausalLM`, `model_type` `llava_llama`): Llama fields at the top level of config.json, `mm_vision_tower` `./clip-vision`, `mm_projector_type` `mlp2x_gelu`, `mm_vision_select_layer` -2, `mm_vision_select_feature` `patch`, `mm_hidden_size` 32, `image_aspect_ratio` `pad`; vocab 700 (the tokenizer has no `<image>`) | float32, LM + projector only |
| `original-llava/clip-vision/` | `CLIPVisionModel` `save_pretrained` (image 28, patch 14: 4 tokens/image, 3 layers) + `preprocessor_config.json`; `mm_vision_tower` names it relative to the checkpoint folder (LLaVA itself resolves it against the working directory) | float32 |
| `images/` | `square.png` 40x40 RGB, `wide.png` 64x24 RGB, `tall.png` 20x48 RGB, `gray.png` 30x30 mode L (grayscale) | |

### Tensor names

- llava-hf hub layout (`clip-llama`, `clip-llama-layers`): `language_model.model.{embed_tokens,layers.N.*,norm}`,
  `language_model.lm_head.weight`, `vision_tower.vision_model.{embeddings,pre_layrnorm,encoder.layers.N,post_layernorm}.*`,
  `multi_modal_projector.linear_{1,2}.{weight,bias}`. transformers 5.24 `save_pretrained` wrote the same except the
  vision tower without `vision_model.` (see next item); the generator renames those keys with safetensors.
- transformers 5.24 `save_pretrained` layout (`siglip-qwen2`): `language_model.model.*`, `vision_tower.{embeddings,encoder,post_layernorm}.*`
  (no `vision_model.`), `multi_modal_projector.*`, and no `lm_head.weight` (tied to `language_model.model.embed_tokens.weight`,
  `tie_word_embeddings` true in config.json). Internally 5.24 names these `model.language_model.*`, `model.vision_tower.*`,
  `model.multi_modal_projector.*`, `lm_head.*`, but save_pretrained reverses its checkpoint-conversion mapping on write.
- original LLaVA (`original-llava/model.safetensors`): `model.embed_tokens.weight`, `model.layers.N.*`, `model.norm.weight`,
  `lm_head.weight`, `model.mm_projector.0.{weight,bias}` (= linear_1), `model.mm_projector.2.{weight,bias}` (= linear_2).
  No vision weights: they are in `clip-vision/model.safetensors` as `vision_model.*`.

Each HF folder also has `preprocessor_config.json` (hub style, `image_processor_type` CLIPImageProcessor /
SiglipImageProcessor), `processor_config.json` (LlavaProcessor: image token, patch size,
`num_additional_image_tokens`, strategy) and the tokenizer.

### Tokenizers

- `clip-llama*`: `data/tokenizers/tiny-spm` (vocab 700) + added special `<image>` = 700; tokenizer_config.json has a
  llava-1.5 (vicuna_v1) chat template: `USER: <image>\\n{text} ASSISTANT:`. BOS added by the post-processor.
  Note the normalizer prepends `▁` to each segment between added tokens, so `<image>\\n` tokenizes as `<image>`, `▁\\n` (388).
- `siglip-qwen2`: `data/tokenizers/tiny-bpe-qwen2` (vocab 600) + added special `<image>` = 600; ChatML template with
  images first in the user turn: `<|im_start|>user\\n<image>\\n{text}<|im_end|>\\n<|im_start|>assistant\\n`. No BOS.
- `original-llava`: tiny-spm unchanged (no `<image>`, no chat template). The prompt is LLaVA's conv `llava_v1`
  (system sentence, ` USER: <image>\\n{text} ASSISTANT:`) tokenized by LLaVA's `tokenizer_image_token`: each chunk around
  `<image>` is tokenized separately (BOS kept only on the first) and joined with IMAGE_TOKEN_INDEX -200.

## golden.json / golden.f32

`golden.f32` holds raw little-endian float32 arrays; golden.json refers to them as `{"offset": <bytes>, "shape": [...]}`.

```
{
 "arrays": {"file": "golden.f32", "dtype": "float32", "byte_order": "little", "offset_unit": "bytes"},
 "new_tokens": 12,
 "images": {"square.png": {"size": [w, h], "mode": "RGB"|"L"}, ...},
 "checkpoints": {
  "<folder>": {
   "layout": "llava-hf" | "transformers-5.24-save_pretrained" | "original-llava",
   "dtype", "sharded", "image_token_id" (HF) | "image_token_index": -200 and "twin_image_token_id" (original),
   "image_tokens_per_image", "vision_feature_layer", "vision_feature_select_strategy", "image_processor",
   "tensor_count", "key_prefixes",
   "cases": [{
     "images": [names],                 # in prompt order
     "messages": [...],                 # HF folders: the chat-template input
     "prompt": str,                     # text with one <image> per image, before expansion
     "prompt_ids": [int],               # tokenizer(prompt) (original-llava: tokenizer_image_token, -200 at the image)
     "input_ids": [int],                # each image token repeated image_tokens_per_image times (what the LM sees)
     "pixel_values": ref [n, 3, H, W],
     "vision_features": ref [n, P, Dv*k],  # hidden_states[layer] (CLS dropped for "default"), layers concatenated
     "projector_output": ref [n, P, Dt],
     "last_logits": [float] (vocab),    # float32 logits at the last prompt position
     "greedy_ids": [int] (12),          # generate(do_sample=False, max_new_tokens=12), eos disabled
     "greedy_min_margin": float         # smallest top1-top2 logit gap over those 12 steps
   }]}}}
```

clip-llama has a fifth case with two images (`square.png`, `wide.png`, pixel_values [2, 3, 32, 32]).

### How the goldens were produced

- float32 transformers 5.24 `LlavaForConditionalGeneration`; `vision_features`/`projector_output` from the vision tower's
  `hidden_states` and the projector, checked against `get_image_features`. `clip-llama-layers` goldens use the
  float16-rounded weights the files hold (computed in float32).
- Pixel values from the PIL-backend ("slow") processors: `CLIPImageProcessorPil` (resize shortest edge to the image
  size, bicubic, center crop, rescale 1/255, CLIP mean/std) and `SiglipImageProcessorPil` (resize to 28x28, bicubic,
  mean/std 0.5). Both convert to RGB first (gray.png). Each folder's preprocessor_config.json, loaded with
  `AutoImageProcessor(backend="pil")`, reproduces the stored pixel values.
- original-llava: LLaVA's `image_aspect_ratio` "pad" path: `convert('RGB')`, `expand2square` with background
  `tuple(int(x*255) for x in image_mean)` = (122, 116, 104) (image centred), then the CLIP processor (28, crop 28).
  Outputs come from an HF twin `LlavaForConditionalGeneration` with the same weights plus one extra vocab row
  (id 700) used as the image token: `input_ids` are `prompt_ids` with -200 -> 700, expanded to 4; `last_logits` are
  cut to the 700 real tokens and id 700 is suppressed during greedy decoding, so they equal what the 700-token
  original model produces.
- The generator reloads clip-llama, siglip-qwen2 and clip-llama-layers with `LlavaForConditionalGeneration.from_pretrained`
  and checks the weights and every case's logits reproduce (max abs diff < 1e-5).
"""

# ------------------------------------------------------------------------------------------------ driver

def verify(folder, model, entry, out_dir):
    """Reloads an HF-layout folder with from_pretrained and checks the first case's logits reproduce."""
    reloaded = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    ref = model.state_dict()
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, ref[k]), f"{folder.name}: {k} differs after reload"
    raw = (out_dir / "golden.f32").read_bytes()
    for case in entry["cases"]:
        pv = case["pixel_values"]
        n = int(np.prod(pv["shape"]))
        pixel_values = torch.from_numpy(np.frombuffer(raw, "<f4", n, pv["offset"]).reshape(pv["shape"]).copy())
        with torch.no_grad():
            logits = reloaded(input_ids=torch.tensor([case["input_ids"]]), pixel_values=pixel_values).logits[0, -1]
        diff = (logits - torch.tensor(case["last_logits"])).abs().max().item()
        assert diff < 1e-5, f"{folder.name}: logits differ by {diff}"
    print(f"[llava] {folder.name}: reload ok", flush=True)


def verify_processor(folder, images, entry, out_dir):
    from transformers import AutoImageProcessor
    proc = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
    raw = (out_dir / "golden.f32").read_bytes()
    for case in entry["cases"]:
        pv = case["pixel_values"]
        stored = np.frombuffer(raw, "<f4", int(np.prod(pv["shape"])), pv["offset"]).reshape(pv["shape"])
        got = proc([images[n] for n in case["images"]], return_tensors="np")["pixel_values"]
        assert np.allclose(got, stored, atol=1e-6), f"{folder.name}: preprocessor_config.json disagrees"


def generate(out_dir):
    for child in ["clip-llama", "siglip-qwen2", "clip-llama-layers", "original-llava", "images"]:
        shutil.rmtree(out_dir / child, ignore_errors=True)
    images = make_images(out_dir / "images")
    arrays = Arrays()
    golden = {"arrays": {"file": "golden.f32", "dtype": "float32", "byte_order": "little",
                         "offset_unit": "bytes"},
              "new_tokens": NEW_TOKENS,
              "images": {n: {"size": list(images[n].size), "mode": images[n].mode} for n in IMAGES},
              "checkpoints": {}}
    built = {}
    f, m, e = clip_llama_family("clip-llama", out_dir, images, arrays, 200, -2, False)
    built["clip-llama"] = (f, m)
    golden["checkpoints"]["clip-llama"] = e
    f, m, e = siglip_qwen2(out_dir, images, arrays, 201)
    built["siglip-qwen2"] = (f, m)
    golden["checkpoints"]["siglip-qwen2"] = e
    f, m, e = clip_llama_family("clip-llama-layers", out_dir, images, arrays, 202, [-2, -1], True)
    built["clip-llama-layers"] = (f, m)
    golden["checkpoints"]["clip-llama-layers"] = e
    f, m, e = original_llava(out_dir, images, arrays, 215)
    built["original-llava"] = (f, m)
    golden["checkpoints"]["original-llava"] = e
    for name, (folder, _) in built.items():
        prefixes, count = key_prefixes(folder)
        golden["checkpoints"][name]["tensor_count"] = count
        golden["checkpoints"][name]["key_prefixes"] = prefixes
    arrays.write(out_dir / "golden.f32")
    (out_dir / "README.md").write_text(README.lstrip("\n"))
    (out_dir / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    for name in ["clip-llama", "siglip-qwen2", "clip-llama-layers"]:
        folder, model = built[name]
        verify(folder, model, golden["checkpoints"][name], out_dir)
        verify_processor(folder, images, golden["checkpoints"][name], out_dir)
    verify_processor(out_dir / "original-llava" / "clip-vision", images,
                     {"cases": []}, out_dir)
