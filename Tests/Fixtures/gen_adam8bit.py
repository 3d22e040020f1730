"""bitsandbytes' blockwise 8-bit AdamW on the CPU: its dynamic codes, blockwise quantization and a
few optimizer steps, for the `--optim adamw_bnb_8bit` tests."""
import json

import torch
from safetensors.torch import save_file


def generate(out):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    tensors = {
        "code_signed": F.create_dynamic_map(signed=True),
        "code_unsigned": F.create_dynamic_map(signed=False),
    }
    # Blockwise quantization: a full block of normals, a block of tiny values, an all-zero block
    # and a partial block.
    values = torch.cat([torch.randn(256), torch.randn(256) * 1e-6, torch.zeros(256), torch.randn(100) * 3])
    codes, absmax = torch.ops.bitsandbytes.quantize_blockwise(values, tensors["code_signed"], 256)
    tensors.update(quantize_input=values, quantize_codes=codes.float(), quantize_absmax=absmax)

    # Optimizer steps: a parameter of 4 blocks and a partial one; gradients drawn per step.
    steps, n = 5, 4 * 256 + 37
    settings = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    p = torch.nn.Parameter(torch.randn(n) * 0.5)
    tensors["param_initial"] = p.detach().clone()
    optimizer = bnb.optim.AdamW([p], optim_bits=8, min_8bit_size=16, **settings)
    for step in range(steps):
        grad = torch.randn(n) * (0.1 * (step + 1))
        grad[:256] *= 1e-3   # one block of small gradients
        tensors[f"grad_{step}"] = grad
        p.grad = grad.clone()
        optimizer.step()
        state = optimizer.state[p]
        tensors[f"param_{step}"] = p.detach().clone()
        tensors[f"state1_{step}"] = state["state1"].float()
        tensors[f"state2_{step}"] = state["state2"].float()
        tensors[f"absmax1_{step}"] = state["absmax1"].clone()
        tensors[f"absmax2_{step}"] = state["absmax2"].clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "adam8bit.safetensors"))
    (out / "settings.json").write_text(json.dumps(dict(settings, steps=steps, count=n, bitsandbytes=bnb.__version__), indent=1) + "\n")
