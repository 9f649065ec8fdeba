"""Small building blocks shared by the attention modules."""

from __future__ import annotations

import copy
import operator
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "make_divisible",
    "check_channels",
    "check_positive",
    "check_ratio",
    "check_choice",
    "resolve_rd_channels",
    "check_input",
    "softmax_fp32",
    "resolve_layer",
    "SafeBatchNorm2d",
    "SafeGroupNorm",
    "LayerNorm2d",
    "largest_divisor",
    "check_odd",
]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, at least ``min_value`` (default ``divisor``).

    Rounding never goes below ``round_limit * v``; if it would, one more ``divisor`` is added.
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return int(new_v)


def check_channels(module: str, channels) -> int:
    """``channels`` as a Python int (NumPy/torch integer scalars accepted); bools and non-integers rejected."""
    try:
        value = None if isinstance(channels, bool) else operator.index(channels)
    except TypeError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"{module}: argument 'channels' must be a positive int, got {channels!r}")
    return value


def check_positive(module: str, arg: str, value, integer: bool = True):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value <= 0:
        kind = "a positive int" if integer else "a positive number"
        raise ValueError(f"{module}: argument '{arg}' must be {kind}, got {value!r}")
    return value


def check_odd(module: str, arg: str, value) -> int:
    """A positive odd int (a kernel size that keeps the length with padding k // 2)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 2 == 0:
        raise ValueError(f"{module}: argument '{arg}' must be a positive odd int, got {value!r}")
    return value


def check_ratio(module: str, arg: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        hint = ""
        if isinstance(value, (int, float)) and value > 1:
            hint = (
                f" (a reduction r is given as its inverse, e.g. r=16 -> {arg}=1/16; input channels are "
                "inferred, so do not pass them positionally)"
            )
        raise ValueError(f"{module}: argument '{arg}' must be a ratio in (0, 1], got {value!r}{hint}")
    return float(value)


def resolve_rd_channels(module: str, channels: int, rd_ratio, rd_divisor, rd_channels) -> int:
    """A bottleneck width: ``rd_channels`` if given, else ``make_divisible(channels * rd_ratio, rd_divisor)``."""
    if rd_channels is None:
        check_ratio(module, "rd_ratio", rd_ratio)
        check_positive(module, "rd_divisor", rd_divisor)
        rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
    return check_positive(module, "rd_channels", rd_channels)


def check_choice(module: str, arg: str, value, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``choices``, else a clear error listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{module}: argument '{arg}' must be one of {list(choices)}, got {value!r}")
    return value


def check_input(module: nn.Module, x: torch.Tensor) -> None:
    """Fail loudly on a tensor the module was not built for (cheap: Python-level shape checks only)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{type(module).__name__}: expected a 4-D (N, C, H, W) tensor, got {got}")
    # under the ONNX tracer sizes are tensors; the channel count is fixed by the weights, and a
    # wrong one still fails in the first convolution, so skip the (warning-raising) comparison there
    if not torch.jit.is_tracing() and x.shape[1] != module.channels:
        raise ValueError(
            f"{type(module).__name__}: input has {x.shape[1]} channels but the module was built with "
            f"channels={module.channels}"
        )


def softmax_fp32(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax computed in at least float32 (float16/bfloat16 logits do not overflow), returned in ``t.dtype``."""
    return torch.softmax(t, dim, dtype=torch.promote_types(t.dtype, torch.float32)).to(t.dtype)


_NAMED_LAYERS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
    "hard_swish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def resolve_layer(module: str, arg: str, layer) -> Callable[[], nn.Module]:
    """Accept an ``nn.Module`` class, a zero-argument factory, or a name such as ``"silu"``."""
    if isinstance(layer, str):
        key = layer.lower().replace("-", "_")
        if key not in _NAMED_LAYERS:
            raise ValueError(f"{module}: argument '{arg}' must be one of {sorted(_NAMED_LAYERS)} or a class, got {layer!r}")
        return _NAMED_LAYERS[key]
    if isinstance(layer, nn.Module):  # an instance such as nn.SiLU(): every use gets its own copy
        return lambda: copy.deepcopy(layer)
    if callable(layer):
        return layer
    raise ValueError(f"{module}: argument '{arg}' must be a layer class or name, got {layer!r}")


class SafeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that does not crash when a training batch has one value per channel.

    With N*H*W == 1 batch statistics are undefined (PyTorch raises "Expected more than 1 value per
    channel when training"); such a call normalises with the running statistics instead and
    leaves them untouched. Every other call is ordinary BatchNorm, so evaluation and export are
    unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            if self.running_mean is None:  # track_running_stats=False: a single value normalises to 0
                out = x - x  # zero, with a (zero) gradient path so every parameter gets a gradient (DDP)
                return out if self.weight is None else out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class SafeGroupNorm(nn.GroupNorm):
    """GroupNorm that accepts a group holding a single value (one channel per group at a 1x1 map, batch 1).

    ``F.group_norm`` refuses such input ("Expected more than 1 value per channel when training"),
    although GroupNorm is defined there: the value minus its mean is 0, so the output is the
    affine bias. This calls the same ATen operator without that Python-side check; every other
    input gives exactly ``nn.GroupNorm``'s result (same parameters, same state dict).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, torch.backends.cudnn.enabled)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor (as the NHWC LayerNorm of ViTs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        # contiguous: a conv fed the permuted (NHWC-strided) view fails to compile under
        # torch.compile with dynamic shapes ("cannot determine truth value of Relational")
        return x.permute(0, 3, 1, 2).contiguous()


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (arXiv:1603.09382)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def largest_divisor(n: int, at_most: int, step: int = 1) -> int:
    """The largest ``g <= at_most`` with ``n % (g * step) == 0`` (at least 1; ``step`` must divide ``n``).

    Used to clamp a paper's group count to the channels at hand, e.g. 32 groups at C = 24 -> 24.
    """
    for g in range(min(at_most, n // step), 0, -1):
        if n % (g * step) == 0:
            return g
    return 1
