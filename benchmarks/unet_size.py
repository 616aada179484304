"""RUSP-Net's size next to classic U-Nets: trainable parameters and forward FLOPs at 256 x 256.

The DFS study says RUSP-Net has about half the parameters of a classic U-Net. This measures
fedfusion's RUSP-Net (``models.rusp_net``) against MONAI's U-Nets, one CT channel in, two mask
classes out, batch 1:

* ``basic_unet``: ``monai.networks.nets.BasicUNet`` with its default features
  (32, 32, 64, 128, 256, 32): a classic U-Net (two 3x3 conv blocks per level, transposed-conv
  upsampling) at channel widths comparable to RUSP-Net's default (16, 32, 64, 128, 256);
* ``unet_original``: BasicUNet at the original U-Net widths (64, 128, 256, 512, 1024);
* ``monai_res_unet``: ``monai.networks.nets.UNet`` with RUSP-Net's widths and two residual
  units per level: the residual U-Net without the dilated pyramid and concatenating decoder;
* ``rusp_net_base<k>``: RUSP-Net with widths ``(k, 2k, 4k, 8k, 16k)`` for several ``k``, to show
  which width would be half of ``basic_unet``.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convs,
matmuls; normalisation and activations are not counted). ``--quick`` counts at 64 x 64.

    python -m benchmarks.unet_size            # writes benchmarks/results/unet_size.json
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import BasicUNet, UNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import Target, bench_main, ratio
from models import create_model

__all__ = ["measure", "run"]

_BASES = (8, 10, 12, 16)


def measure(model: nn.Module, size: int) -> dict[str, float]:
    """Trainable parameters and forward GFLOPs of ``model`` on one ``(1, 1, size, size)`` input."""
    model.eval()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 1, size, size))
    return {"params": params, "gflops": counter.get_total_flops() / 1e9}


def _models() -> dict[str, nn.Module]:
    models: dict[str, nn.Module] = {
        "rusp_net": create_model("rusp_net", num_classes=2, in_chans=1),
        "basic_unet": BasicUNet(spatial_dims=2, in_channels=1, out_channels=2),
        "unet_original": BasicUNet(
            spatial_dims=2, in_channels=1, out_channels=2, features=(64, 128, 256, 512, 1024, 64)
        ),
        "monai_res_unet": UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=2,
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            num_res_units=2,
        ),
    }
    for base in _BASES:
        widths = tuple(base * 2**i for i in range(5))
        models[f"rusp_net_base{base}"] = create_model(
            "rusp_net", num_classes=2, in_chans=1, channels=widths
        )
    return models


def run(quick: bool = False) -> dict[str, Any]:
    """Parameters and FLOPs of every model; ratios of RUSP-Net over the classic U-Nets."""
    torch.manual_seed(0)
    size = 64 if quick else 256
    sizes = {name: measure(model, size) for name, model in _models().items()}
    rusp, basic, original = sizes["rusp_net"], sizes["basic_unet"], sizes["unet_original"]
    ratios = {
        "params_rusp_over_basic_unet": ratio(rusp["params"], basic["params"]),
        "gflops_rusp_over_basic_unet": ratio(rusp["gflops"], basic["gflops"]),
        "params_rusp_over_unet_original": ratio(rusp["params"], original["params"]),
        "gflops_rusp_over_unet_original": ratio(rusp["gflops"], original["gflops"]),
    }
    note = "the DFS study: about half of a classic U-Net"
    return {
        "name": "unet_size",
        "description": f"RUSP-Net vs U-Nets: trainable parameters and forward GFLOPs at {size} px",
        "image_size": size,
        "models": sizes,
        "ratios": ratios,
        "targets": {
            "params_rusp_over_basic_unet": Target(0.5, note=note),
            "params_rusp_over_unet_original": Target(0.5, note=note),
        },
    }


def main() -> None:
    bench_main(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
