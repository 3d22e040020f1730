"""Tiny random vision towers (CLIP ViT, SigLIP) and LLaVA projectors with transformers outputs.

clip/, siglip/: save_pretrained folders of CLIPVisionModel / SiglipVisionModel (f32).
projector-*.safetensors: LlavaMultiModalProjector-shaped state dicts (linear_1.*, linear_2.*).
golden.json: the pixels, every hidden state (output_hidden_states indexing) of both towers, and
each projector's output on CLIP's hidden_states[-2] without the class token (LLaVA's default);
siglip-36: the SigLIP tower on a 36×36 image (not a multiple of the patch, like so400m's 384/14).
clip-vit-large-patch14-336.json: the ViT-L/14-336 vision config, for the speed comparison only.
"""
import json

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel
from transformers.activations import ACT2FN

TOWERS = {
    "clip": (CLIPVisionModel, CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16)),
    "siglip": (SiglipVisionModel, SiglipVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)),
}

TEXT_HIDDEN = 48

# name → (kind, bias, activation)
PROJECTORS = {
    "mlp2x_gelu": ("mlp2x_gelu", True, "gelu"),
    "mlp2x_gelu-nobias": ("mlp2x_gelu", False, "gelu"),
    "linear": ("linear", True, None),
}

VIT_L_336 = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                 num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                 num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768)


class Projector(nn.Module):
    """LlavaMultiModalProjector's structure (linear_1 → act → linear_2) without needing a LlavaConfig."""

    def __init__(self, vision_hidden, text_hidden, bias, act):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=bias)
        self.act = ACT2FN[act] if act else None
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=bias) if act else None

    def forward(self, x):
        x = self.linear_1(x)
        return self.linear_2(self.act(x)) if self.act else x


def perturb(model):
    # Random init leaves LayerNorms at (1, 0) and biases at 0; make them matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)


def generate(out_dir):
    golden = {}
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randn(1, 3, 32, 32, generator=gen)
    golden["pixels"] = pixels[0].flatten().tolist()
    for i, (name, (cls, config)) in enumerate(TOWERS.items()):
        torch.manual_seed(200 + i)
        model = cls(config).eval()
        perturb(model)
        model.save_pretrained(out_dir / name)
        with torch.no_grad():
            out = model(pixel_values=pixels, output_hidden_states=True)
        states = [h[0].flatten().tolist() for h in out.hidden_states]
        assert len(states) == config.num_hidden_layers + 1
        golden[name] = {"hidden_states": states, "tokens": out.hidden_states[0].shape[1],
                        "last_hidden_state": out.last_hidden_state[0].flatten().tolist()}
        if name == "clip":
            features = out.hidden_states[-2][0, 1:]
        else:
            # 36 is not a multiple of the patch: the conv drops the last 4 rows and columns.
            wide = torch.randn(1, 3, 36, 36, generator=gen)
            with torch.no_grad():
                ragged = model(pixel_values=wide, output_hidden_states=True)
            golden["siglip-36"] = {"pixels": wide[0].flatten().tolist(),
                                   "hidden_states": [h[0].flatten().tolist() for h in ragged.hidden_states]}

    golden["projector_input"] = features.flatten().tolist()
    for i, (name, (kind, bias, act)) in enumerate(PROJECTORS.items()):
        torch.manual_seed(300 + i)
        projector = Projector(32, TEXT_HIDDEN, bias, act).eval()
        perturb(projector)
        save_file({k: v.contiguous() for k, v in projector.state_dict().items()},
                  str(out_dir / f"projector-{name}.safetensors"))
        with torch.no_grad():
            golden[f"projector-{name}"] = {"kind": kind, "bias": bias, "text_hidden": TEXT_HIDDEN,
                                           "output": projector(features).flatten().tolist()}

    (out_dir / "golden.json").write_text(json.dumps(golden) + "\n")
    (out_dir / "clip-vit-large-patch14-336.json").write_text(json.dumps(VIT_L_336, indent=1) + "\n")
