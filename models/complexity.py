"""Parameter and multiply-accumulate counts, reported in the weights' metadata."""

import torch
from torch import nn

from models.registry import INPUT_SHAPE

__all__ = ["count_macs", "count_parameters"]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_macs(net: nn.Module) -> int:
    """MACs of one forward pass on one image, counting convolutions and linear layers."""
    total = 0

    def hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * kernel * module.in_channels // module.groups
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, *INPUT_SHAPE))
    finally:
        for handle in handles:
            handle.remove()
    return total
