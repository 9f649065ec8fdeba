"""FLOP counts that include attention's own operations.

ultralytics' GFLOPs figure (thop) and ``torch.utils.flop_counter.FlopCounterMode`` count
matrix products and convolutions only. For plain convolutional blocks that is nearly all of
the arithmetic, but attention spends real work on softmaxes, gates, elementwise products,
pooling and top-k routing, which those counters report as free. :func:`count_flops` runs
the module once under ``FlopCounterMode`` with extra formulas (its ``custom_mapping``) for
those operations, so the total is the matrix/convolution part *plus* everything else, and
the matrix/convolution part alone stays available for comparison.

Conventions
-----------
* A multiply-add counts 2 FLOPs (as torch's counter and ultralytics' GFLOPs do): a matrix
  product (m x k)(k x n) is ``2 m k n``, a convolution ``2 * C_in/groups * k_h * k_w`` per
  output element. Those formulas are torch's own; this is ``FlopReport.matmul``.
* Every other arithmetic operation counts 1 FLOP per scalar operation. Comparisons
  (ReLU, max pooling, top-k) and selects count 1 like arithmetic, and a transcendental
  function (exp, log, tanh, erf, sqrt) counts 1 like a multiply. Data movement (views,
  copies, concatenation, padding, nearest upsampling, dtype casts, tensor creation) is 0.

Cost model (per element of the output unless said otherwise)
-------------------------------------------------------------
====================================  ===============================================
bias of a convolution / ``addmm``      1 (the add; torch's counter leaves it out)
add, sub, mul, div, where, compare     1 (2 for ``add``/``sub`` with ``alpha != 1``)
relu, threshold, clamp_min/max         1 (one comparison); hardtanh/relu6, clamp: 2
sigmoid                                3 (exp, add, divide: ``1 / (1 + exp(-x))``)
silu                                   4 (sigmoid, then multiply by x)
gelu                                   5 (erf form: scale, erf, add, two multiplies);
                                       9 with ``approximate="tanh"``
hardsigmoid / hardswish                4 / 5; leaky_relu 2, elu 4, softplus 3, mish 5
tanh, exp, log, erf, sqrt, rsqrt       1
softmax / log_softmax                  5 per element: one comparison for the running max,
                                       subtract the max, exp, add to the sum, divide by
                                       the sum (log_softmax: subtract the log-sum)
sum / amax / amin / argmax             N_in - N_out (adds or comparisons)
mean, adaptive average pooling         N_in (N_in - N_out adds, N_out divides)
var / std                              4 N_in + N_out (+ N_out square roots for std)
max_pool                               k_h k_w - 1 comparisons per output
avg_pool                               k_h k_w per output (adds and the divide)
batch_norm, eval                       2 (scale and shift; per-channel constants folded,
                                       as after fusing; fused into the conv it costs 0)
batch_norm, train / layer_norm /       7 (statistics: add for the mean, subtract, square,
group_norm                             add for the variance; normalise: one multiply;
                                       affine: multiply and add). 5 without affine.
top-k over n with k kept               n * max(1, ceil(log2 k)) comparisons per row: a
                                       size-k heap costs log2 k comparisons per element,
                                       and even k = 1 compares every element once
sort over n                            n * ceil(log2 n) per row
gather / index / index_select /        0, but listed in ``by_op`` (data movement);
embedding / scatter                    accumulating variants (index_put with
                                       accumulate, scatter_add, index_add) 1 per source
                                       element
grid_sample (bilinear)                 7 per output element (4 taps: 4 multiplies, 3 adds)
                                       + 16 per sampling point (unnormalise, floor,
                                       fractions, tap weights); nearest 0 + 8, bicubic
                                       31 + 40; its backward twice the forward
scaled dot-product attention           torch's two matmuls (in ``matmul``) plus, per
                                       score (B * heads * L_q * L_k): 1 scale,
                                       5 softmax, 1 masking when a mask or causal flag is
                                       given, 2 dropout when p > 0
====================================  ===============================================

Backward operations (``training=True``) use the same conventions: torch's formulas for
matrix and convolution gradients, plus 1 per element for ``relu``'s backward, 3 for
sigmoid's and tanh's (``g * y * (1 - y)``), 8 for silu's, 11 for gelu's (19 in the tanh
form), 4 for softmax's (``y * (g - sum(g * y))``), 9 for batch/layer/group norm in train
mode (6 in eval mode), and for SDPA's the five matmuls of torch's formula plus, per score,
6 (recomputed scale/exp from the saved log-sum-exp, ``P * (dP - D)``, scale of dS) + 1
with a mask, and 2 per output element for ``D = rowsum(dO * O)``.

Every operation that runs is either given a cost above, or is known data movement, or is
reported in ``FlopReport.uncounted`` (an operation that does arithmetic and has no
formula here), so a total is never silently short.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from torch.utils import flop_counter as _torch_fc
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["FlopReport", "FlopCounter", "count_flops", "model_flops", "format_flops"]

aten = torch.ops.aten
Tensor = torch.Tensor
Cost = tuple  # (matmul FLOPs, other FLOPs)


# ----------------------------------------------------------------------------- helpers


def _numel(x) -> int:
    return int(x.numel()) if isinstance(x, Tensor) else 0


def _first(x):
    if isinstance(x, (tuple, list)):
        return x[0] if x else None
    return x


def _arg(args, kwargs, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _op_name(packet) -> str:
    name = str(packet)
    return name[len("aten.") :] if name.startswith("aten.") else name


def format_flops(n: float, unit: str = "FLOPs") -> str:
    """``1234567`` -> ``'1.235 MFLOPs'``."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {prefix}{unit}"
    return f"{int(n)} {unit}"


# ----------------------------------------------------------------------------- cost formulas
# Each formula takes (args, kwargs, out) of one aten call and returns (matmul, other).


def _per_output(cost: int):
    def formula(args, kwargs, out):
        return 0, cost * _numel(_first(out))

    return formula


def _add_sub(args, kwargs, out):
    alpha = _arg(args, kwargs, 2, "alpha", 1)
    return 0, (1 if alpha == 1 else 2) * _numel(_first(out))


def _clamp(args, kwargs, out):
    bounds = sum(_arg(args, kwargs, i, name) is not None for i, name in ((1, "min"), (2, "max")))
    return 0, bounds * _numel(_first(out))


def _max_min(args, kwargs, out):
    # max(x) / max(x, dim) reduce; max(x, other) is elementwise
    if len(args) > 1 and isinstance(args[1], Tensor):
        return 0, _numel(_first(out))
    return _reduce(args, kwargs, out)


def _gelu(args, kwargs, out):
    approximate = kwargs.get("approximate", "none")
    return 0, (9 if approximate == "tanh" else 5) * _numel(_first(out))


def _gelu_backward(args, kwargs, out):
    approximate = kwargs.get("approximate", "none")
    return 0, (19 if approximate == "tanh" else 11) * _numel(_first(out))


def _reduce(args, kwargs, out):
    """sum-like: N_in - N_out adds (or comparisons)."""
    return 0, max(_numel(args[0]) - _numel(_first(out)), 0)


def _mean(args, kwargs, out):
    return 0, _numel(args[0])


def _var(extra_per_output: int):
    def formula(args, kwargs, out):
        n_out = _numel(_first(out))
        return 0, 4 * _numel(args[0]) + (1 + extra_per_output) * n_out

    return formula


def _vector_norm(args, kwargs, out):
    return 0, 2 * _numel(args[0]) + _numel(_first(out))


def _logsumexp(args, kwargs, out):
    return 0, 4 * _numel(args[0]) + _numel(_first(out))


def _input_numel(cost: int = 1):
    def formula(args, kwargs, out):
        return 0, cost * _numel(args[0])

    return formula


def _kernel_taps(args, kwargs, spatial: int) -> int:
    k = _arg(args, kwargs, 1, "kernel_size")
    k = list(k) if isinstance(k, (list, tuple)) else [k]
    if len(k) == 1:
        k = k * spatial
    return math.prod(int(v) for v in k)


def _max_pool(spatial: int):
    def formula(args, kwargs, out):
        return 0, (_kernel_taps(args, kwargs, spatial) - 1) * _numel(_first(out))

    return formula


def _avg_pool(spatial: int):
    def formula(args, kwargs, out):
        return 0, _kernel_taps(args, kwargs, spatial) * _numel(_first(out))

    return formula


def _avg_pool_backward(spatial: int):
    def formula(args, kwargs, out):  # avg_pool2d_backward(grad_output, self, kernel_size, ...)
        k = _arg(args, kwargs, 2, "kernel_size")
        k = list(k) if isinstance(k, (list, tuple)) else [k]
        taps = math.prod(int(v) for v in (k * spatial if len(k) == 1 else k))
        return 0, taps * _numel(args[0])

    return formula


def _upsample_nearest_backward(args, kwargs, out):
    return 0, max(_numel(args[0]) - _numel(_first(out)), 0)


def _batch_norm(training_index: int | None, running_index: int | None = 3):
    """Forward batch norm: 7 per element with batch statistics, 2 with running ones."""

    def formula(args, kwargs, out):
        if training_index is None:  # *_no_update: batch statistics only when no running stats
            training = _arg(args, kwargs, running_index, "running_mean") is None
        elif training_index < 0:  # *_no_training
            training = False
        elif training_index > 99:  # *_with_update
            training = True
        elif len(args) > 3 and isinstance(args[3], bool):  # _native_batch_norm_legit.no_stats
            training = args[3]
        else:
            training = bool(_arg(args, kwargs, training_index, "training"))
        return 0, (7 if training else 2) * _numel(args[0])

    return formula


def _batch_norm_backward(train_index: int | None):
    def formula(args, kwargs, out):
        train = True if train_index is None else bool(_arg(args, kwargs, train_index, "train"))
        grad = args[1] if train_index is None else args[0]  # cudnn: (input, grad_output, ...)
        return 0, (9 if train else 6) * _numel(grad)

    return formula


def _layer_norm(args, kwargs, out):
    weight = _arg(args, kwargs, 2, "weight")
    bias = _arg(args, kwargs, 3, "bias")
    return 0, (5 + (weight is not None) + (bias is not None)) * _numel(args[0])


def _group_norm(args, kwargs, out):
    weight = _arg(args, kwargs, 1, "weight")
    bias = _arg(args, kwargs, 2, "bias")
    return 0, (5 + (weight is not None) + (bias is not None)) * _numel(args[0])


def _norm_backward(args, kwargs, out):
    return 0, 9 * _numel(args[0])


def _topk(args, kwargs, out):
    x = args[0]
    k = int(_arg(args, kwargs, 1, "k"))
    dim = int(_arg(args, kwargs, 2, "dim", -1))
    n = int(x.shape[dim]) if x.dim() else 1
    rows = _numel(x) // max(n, 1)
    if k <= 0 or n == 0:
        return 0, 0
    return 0, rows * n * max(1, math.ceil(math.log2(k)))


def _sort(args, kwargs, out):
    x = args[0]
    dim = int(kwargs.get("dim", args[1] if len(args) > 1 else -1))  # sort.stable takes dim as a keyword
    n = int(x.shape[dim]) if x.dim() else 1
    rows = _numel(x) // max(n, 1)
    return 0, rows * n * max(1, math.ceil(math.log2(n))) if n > 1 else 0


def _zero(args, kwargs, out):
    return 0, 0


def _index_put(args, kwargs, out):
    accumulate = bool(_arg(args, kwargs, 3, "accumulate", False))
    return 0, _numel(_arg(args, kwargs, 2, "values")) if accumulate else 0


def _source_numel(index: int, name: str):
    def formula(args, kwargs, out):
        return 0, _numel(_arg(args, kwargs, index, name))

    return formula


# grid_sample, per output element and per sampling point, by interpolation mode (0 bilinear, 1 nearest,
# 2 bicubic): bilinear mixes 4 taps (4 multiplies, 3 adds); a point costs 6 to unnormalise its two
# coordinates, 2 floors, 2 fractions, 2 complements and 4 tap-weight products
_GRID_SAMPLE_COST = {0: (7, 16), 1: (0, 8), 2: (31, 40)}


def _grid_sample_cost(grid: Tensor, out_numel: int, mode: int) -> int:
    per_element, per_point = _GRID_SAMPLE_COST.get(int(mode), _GRID_SAMPLE_COST[0])
    return per_element * out_numel + per_point * _numel(grid) // grid.shape[-1]


def _grid_sample(args, kwargs, out):  # grid_sampler_2d(input, grid, interpolation_mode, ...)
    return 0, _grid_sample_cost(args[1], _numel(_first(out)), _arg(args, kwargs, 2, "interpolation_mode", 0))


def _grid_sample_backward(args, kwargs, out):  # (grad_output, input, grid, interpolation_mode, ...)
    return 0, 2 * _grid_sample_cost(args[2], _numel(args[0]), _arg(args, kwargs, 3, "interpolation_mode", 0))


def _dropout(args, kwargs, out):
    p = float(_arg(args, kwargs, 1, "p", 0.0))
    train = _arg(args, kwargs, 2, "train", True)
    return 0, (2 * _numel(args[0]) if train and p > 0 else 0)


def _sdpa_scores(q: Tensor, k: Tensor) -> int:
    return math.prod(int(s) for s in q.shape[:-1]) * int(k.shape[-2])


def _sdpa_matmul(q: Tensor, k: Tensor, v: Tensor) -> int:
    # scores (L_q x d) @ (d x L_k) and output (L_q x L_k) @ (L_k x d_v), per batch and head
    return 2 * _sdpa_scores(q, k) * (int(q.shape[-1]) + int(v.shape[-1]))


def _sdpa_forward(q_i, k_i, v_i, mask: tuple[int, str] | None, dropout: tuple[int, str], causal: tuple[int, str]):
    def formula(args, kwargs, out):
        q, k, v = args[q_i], args[k_i], args[v_i]
        masked = bool(_arg(args, kwargs, *causal, False))
        if mask is not None:
            masked = masked or isinstance(_arg(args, kwargs, *mask), Tensor)
        p = float(_arg(args, kwargs, *dropout, 0.0) or 0.0)
        per_score = 1 + 5 + (1 if masked else 0) + (2 if p > 0 else 0)
        return _sdpa_matmul(q, k, v), per_score * _sdpa_scores(q, k)

    return formula


def _sdpa_backward(mask: tuple[int, str] | None, dropout: tuple[int, str], causal: tuple[int, str]):
    def formula(args, kwargs, out):
        grad_out, q, k, v = args[0], args[1], args[2], args[3]
        masked = bool(_arg(args, kwargs, *causal, False))
        if mask is not None:
            masked = masked or isinstance(_arg(args, kwargs, *mask), Tensor)
        p = float(_arg(args, kwargs, *dropout, 0.0) or 0.0)
        scores = _sdpa_scores(q, k)
        # recompute scores, dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q (torch's formula)
        mm = 2 * scores * (3 * int(q.shape[-1]) + 2 * int(v.shape[-1]))
        per_score = 6 + (1 if masked else 0) + (2 if p > 0 else 0)
        return mm, per_score * scores + 2 * _numel(grad_out)

    return formula


def _mv(args, kwargs, out):
    m = args[0]
    return 2 * _numel(m), 0


def _dot(args, kwargs, out):
    return 2 * _numel(args[0]), 0


def _addmv(args, kwargs, out):
    beta = _arg(args, kwargs, 3, "beta", 1)
    return 2 * _numel(args[1]), (_numel(_first(out)) if beta != 0 else 0)


def _addmm_activation(args, kwargs, out):
    mat1, mat2 = args[1], args[2]
    n_out = _numel(_first(out))
    act = 5 if kwargs.get("use_gelu", False) else 1
    return 2 * int(mat1.shape[0]) * int(mat1.shape[1]) * int(mat2.shape[1]), (1 + act) * n_out


# torch formulas extended with the bias term torch leaves out


def _with_bias(builtin: Callable, bias_index: int | None):
    def formula(args, kwargs, out):
        mm = builtin(*args, out_val=out, **kwargs)
        other = 0
        if bias_index is not None and isinstance(_arg(args, kwargs, bias_index, "bias"), Tensor):
            other = _numel(_first(out))
        return mm, other

    return formula


def _with_beta_add(builtin: Callable):
    def formula(args, kwargs, out):
        mm = builtin(*args, out_val=out, **kwargs)
        beta = kwargs.get("beta", 1)
        alpha = kwargs.get("alpha", 1)
        n_out = _numel(_first(out))
        return mm, (n_out if beta != 0 else 0) + (n_out if alpha != 1 else 0) + (n_out if beta not in (0, 1) else 0)

    return formula


def _conv_backward(args, kwargs, out):
    """Gradient of a convolution: grad_input and grad_weight each cost one forward convolution.

    torch's formula (``FlopCounterMode``) counts a grouped convolution's backward as if it had
    one group (a depthwise 3x3 over C channels comes out C times too high); this one does not.
    """
    grad_out, x, w = args[0], args[1], args[2]
    transposed = bool(_arg(args, kwargs, 7, "transposed", False))
    output_mask = _arg(args, kwargs, 10, "output_mask", (True, True, True))
    spatial = (x if transposed else grad_out).shape[2:]
    forward = 2 * int(x.shape[0]) * math.prod(int(v) for v in spatial) * math.prod(int(v) for v in w.shape)
    mm = forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))
    other = 0
    if output_mask[2] and grad_out.dim() >= 2:  # bias gradient: sum of grad_out over all but C_out
        other = _numel(grad_out) - int(grad_out.shape[1])
    return mm, other


# ----------------------------------------------------------------------------- the table

_TORCH_REGISTRY: dict = dict(_torch_fc.flop_registry)  # torch's own (matmul/conv/attention) formulas


def _packet(name: str):
    return getattr(aten, name, None)


def _build_formulas() -> dict:
    table: dict[Any, Callable] = {}

    def put(names: Iterable[str] | str, formula: Callable):
        for name in [names] if isinstance(names, str) else names:
            packet = _packet(name)
            if packet is not None:
                table[packet] = formula

    def inplace(names):
        return [n for base in names for n in (base, base + "_")]

    # torch's matmul/conv formulas: everything in its registry, as matmul
    for packet, builtin in _TORCH_REGISTRY.items():
        table[packet] = (lambda b: lambda args, kwargs, out: (b(*args, out_val=out, **kwargs), 0))(builtin)
    for name in ("convolution", "_convolution", "convolution_overrideable"):
        if _packet(name) in _TORCH_REGISTRY:
            table[_packet(name)] = _with_bias(_TORCH_REGISTRY[_packet(name)], 2)
    if _packet("_slow_conv2d_forward") in _TORCH_REGISTRY:
        table[aten._slow_conv2d_forward] = _with_bias(_TORCH_REGISTRY[aten._slow_conv2d_forward], 3)
    for name in ("addmm", "baddbmm"):
        table[_packet(name)] = _with_beta_add(_TORCH_REGISTRY[_packet(name)])
    table[aten.convolution_backward] = _conv_backward
    put("mv", _mv)
    put(["dot", "vdot"], _dot)
    put("addmv", _addmv)
    put("_addmm_activation", _addmm_activation)

    # scaled dot-product attention: matmuls + scale + softmax + masking (+ dropout)
    put("_scaled_dot_product_flash_attention_for_cpu", _sdpa_forward(0, 1, 2, (99, "attn_mask"), (3, "dropout_p"), (4, "is_causal")))
    put("_scaled_dot_product_efficient_attention", _sdpa_forward(0, 1, 2, (3, "attn_bias"), (5, "dropout_p"), (6, "is_causal")))
    put("_scaled_dot_product_flash_attention", _sdpa_forward(0, 1, 2, None, (3, "dropout_p"), (4, "is_causal")))
    put("_scaled_dot_product_cudnn_attention", _sdpa_forward(0, 1, 2, (3, "attn_bias"), (5, "dropout_p"), (6, "is_causal")))
    put(
        "_scaled_dot_product_fused_attention_overrideable",
        _sdpa_forward(0, 1, 2, (3, "attn_bias"), (4, "dropout_p"), (5, "is_causal")),
    )
    put("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward((99, "attn_mask"), (6, "dropout_p"), (7, "is_causal")))
    put("_scaled_dot_product_efficient_attention_backward", _sdpa_backward((4, "attn_bias"), (9, "dropout_p"), (11, "is_causal")))
    put("_scaled_dot_product_flash_attention_backward", _sdpa_backward(None, (10, "dropout_p"), (11, "is_causal")))
    put("_scaled_dot_product_cudnn_attention_backward", _sdpa_backward((8, "attn_bias"), (13, "dropout_p"), (14, "is_causal")))
    put(
        "_scaled_dot_product_fused_attention_overrideable_backward",
        _sdpa_backward((4, "attn_bias"), (12, "dropout_p"), (13, "is_causal")),
    )

    # elementwise arithmetic, comparisons, selects: 1 per output element
    put(inplace(["add", "sub", "rsub"]), _add_sub)
    put(
        inplace(
            [
                "mul", "div", "neg", "abs", "reciprocal", "sqrt", "rsqrt", "exp", "exp2", "expm1", "log", "log2",
                "log10", "log1p", "pow", "square", "tanh", "erf", "erfc", "sign", "sgn", "floor", "ceil", "round",
                "trunc", "frac", "fmod", "remainder", "sin", "cos", "atan", "atan2", "lt", "le", "gt", "ge", "eq",
                "ne", "logical_and", "logical_or", "logical_xor", "logical_not", "bitwise_and", "bitwise_or",
                "bitwise_xor", "bitwise_not", "masked_fill", "relu", "clamp_min", "clamp_max", "floor_divide",
            ]
        ),
        _per_output(1),
    )
    put(["maximum", "minimum", "fmax", "fmin", "where", "isnan", "isinf", "isfinite", "nan_to_num", "nan_to_num_"], _per_output(1))
    put(inplace(["addcmul", "addcdiv", "lerp", "hardtanh", "leaky_relu", "_prelu_kernel"]), _per_output(2))
    put(inplace(["clamp"]), _clamp)
    put(["max", "min"], _max_min)
    # activations (see the table in the module docstring)
    put(inplace(["sigmoid"]), _per_output(3))
    put(inplace(["silu"]), _per_output(4))
    put(inplace(["gelu"]), _gelu)
    put(inplace(["hardsigmoid"]), _per_output(4))
    put(inplace(["hardswish"]), _per_output(5))
    put(inplace(["elu"]), _per_output(4))
    put(["softplus"], _per_output(3))
    put(inplace(["mish"]), _per_output(5))
    put(["log_sigmoid_forward"], _per_output(4))
    put(["glu"], _per_output(4))
    # _safe_softmax: the softmax of SDPA's math path (rows that are all -inf give 0, not NaN)
    put(["_softmax", "_log_softmax", "_safe_softmax"], _per_output(5))
    put(["native_dropout"], _dropout)
    # backward of activations and softmax
    put("threshold_backward", _per_output(1))
    put(["sigmoid_backward", "tanh_backward"], _per_output(3))
    put("silu_backward", _per_output(8))
    put("gelu_backward", _gelu_backward)
    put(["hardswish_backward"], _per_output(6))
    put(["hardsigmoid_backward", "elu_backward"], _per_output(3))
    put(["hardtanh_backward", "leaky_relu_backward", "native_dropout_backward"], _per_output(2))
    put("softplus_backward", _per_output(7))
    put("mish_backward", _per_output(11))
    put(["_softmax_backward_data", "_log_softmax_backward_data"], _per_output(4))
    # reductions and pooling
    put(["sum", "prod", "amax", "amin", "argmax", "argmin", "any", "all", "nansum"], _reduce)
    put(["mean", "nanmean", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d"], _mean)
    put(["adaptive_max_pool2d", "adaptive_max_pool3d"], _reduce)
    put(["var", "var_mean"], _var(0))
    put(["std", "std_mean"], _var(1))
    put(["linalg_vector_norm", "norm"], _vector_norm)
    put("logsumexp", _logsumexp)
    put(inplace(["cumsum"]), _input_numel(1))
    put(["max_pool2d_with_indices", "max_pool2d"], _max_pool(2))
    put("grid_sampler_2d", _grid_sample)
    put("grid_sampler_2d_backward", _grid_sample_backward)
    put(["max_pool3d_with_indices"], _max_pool(3))
    put(["max_pool1d"], _max_pool(1))
    put(["avg_pool2d"], _avg_pool(2))
    put(["avg_pool3d"], _avg_pool(3))
    put(["avg_pool2d_backward"], _avg_pool_backward(2))
    put(["avg_pool3d_backward"], _avg_pool_backward(3))
    put(["max_pool2d_with_indices_backward", "max_pool3d_with_indices_backward"], _input_numel(1))
    put(["_adaptive_avg_pool2d_backward", "adaptive_max_pool2d_backward"], _input_numel(1))
    put(["upsample_nearest1d_backward", "upsample_nearest2d_backward", "upsample_nearest3d_backward"], _upsample_nearest_backward)
    put(["upsample_bilinear2d", "upsample_bicubic2d", "_upsample_bilinear2d_aa"], _per_output(7))
    put(["upsample_bilinear2d_backward"], _input_numel(7))
    # normalisation
    put("native_batch_norm", _batch_norm(5))
    put("_native_batch_norm_legit", _batch_norm(5))
    put("_native_batch_norm_legit_no_training", _batch_norm(-1))
    put("_batch_norm_with_update", _batch_norm(100))
    put("_batch_norm_no_update", _batch_norm(None))
    put(["cudnn_batch_norm", "miopen_batch_norm"], _batch_norm(5))
    put("native_batch_norm_backward", _batch_norm_backward(7))
    put("batch_norm_backward", _batch_norm_backward(7))  # 'update' flag: batch statistics used
    put(["cudnn_batch_norm_backward", "miopen_batch_norm_backward"], _batch_norm_backward(None))
    put("native_layer_norm", _layer_norm)
    put("native_group_norm", _group_norm)
    put(["native_layer_norm_backward", "native_group_norm_backward"], _norm_backward)
    # selection: top-k and sorting
    put("topk", _topk)
    put("sort", _sort)
    # gather / index: data movement, 0 FLOPs, listed
    put(["index", "_unsafe_index", "gather", "index_select", "embedding", "masked_select", "take", "scatter", "scatter_"], _zero)
    put(["index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put"], _index_put)
    put(["scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_"], _source_numel(3, "src"))
    put(["index_add", "index_add_"], _source_numel(3, "source"))
    put("embedding_dense_backward", _input_numel(1))
    return table


_FORMULAS = _build_formulas()

# Operations that move, view or create data and do no arithmetic: not counted, not flagged.
_DATA_MOVEMENT = frozenset(
    """
    view _unsafe_view reshape _reshape_alias view_as permute transpose t expand expand_as slice select narrow
    split split_with_sizes unbind chunk squeeze unsqueeze flatten unflatten clone contiguous copy copy_ _to_copy
    to _copy_from _copy_from_and_resize detach detach_ alias lift_fresh lift_fresh_copy cat stack hstack vstack
    constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d replication_pad2d
    replication_pad3d empty empty_like empty_strided new_empty new_empty_strided zeros zeros_like new_zeros ones
    ones_like new_ones full full_like new_full fill fill_ zero_ scalar_tensor arange linspace _local_scalar_dense
    item as_strided as_strided_ as_strided_scatter unfold roll flip repeat repeat_interleave tile
    upsample_nearest1d upsample_nearest2d upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d
    _upsample_nearest_exact3d pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle slice_backward
    select_backward slice_scatter select_scatter diagonal diagonal_backward expand_copy permute_copy view_copy
    t_copy transpose_copy unsqueeze_copy squeeze_copy _unsafe_view_copy set_ resize_ resize_as_ bernoulli
    bernoulli_ rand rand_like randn randn_like randint randint_like randperm normal normal_ uniform_ random_
    exponential_ _pin_memory is_same_size equal _assert_async _assert_tensor_metadata _functional_assert_async
    sym_constrain_range_for_size nonzero tensor_split movedim moveaxis split_copy unbind_copy index_fill
    index_fill_ masked_scatter _has_compatible_shallow_copy_type _to_dense _nested_tensor_from_mask
    _make_dep_token record_stream _foreach_zero_ zero copy_from
    """.split()
)


# ----------------------------------------------------------------------------- the report


@dataclass
class FlopReport:
    """FLOPs of one run, split by operation and by module.

    Attributes:
        total: all FLOPs counted (matrix products, convolutions and every other operation).
        matmul: FLOPs of matrix products and convolutions alone, by torch's formulas: what
            ``FlopCounterMode`` reports where it has a formula for every kernel that runs
            (it has none for the CPU flash-attention kernel, see ``torch_builtin``).
        by_op: operation (aten name, e.g. ``"_softmax"``) -> FLOPs; zero-cost operations of
            interest (``index``, ``gather``...) appear with 0.
        by_module: module path (as in ``named_modules()``; ``""`` is the root) -> FLOPs of
            the operations run by that module itself, not by its submodules; sums to ``total``.
        by_module_op: module path -> {operation -> FLOPs}.
        op_calls: operation -> number of calls (for the operations in ``by_op``).
        torch_builtin: what an unmodified ``FlopCounterMode`` reports for the same run.
        uncounted: operations that do arithmetic but have no formula here -> number of calls
            (empty when the total is complete).
        training: True when the count is a training step (train-mode forward + backward).
    """

    total: int
    matmul: int
    by_op: dict[str, int]
    by_module: dict[str, int]
    by_module_op: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    op_calls: dict[str, int] = field(default_factory=dict, repr=False)
    torch_builtin: int = 0
    uncounted: dict[str, int] = field(default_factory=dict)
    training: bool = False

    @property
    def other(self) -> int:
        """FLOPs outside matrix products and convolutions (softmax, gates, pooling, norms...)."""
        return self.total - self.matmul

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def inclusive(self, depth: int | None = None) -> dict[str, int]:
        """Module path -> FLOPs including its submodules (``""``: the whole run).

        ``depth`` keeps paths with at most that many dotted components (the root is depth 0).
        """
        out: dict[str, int] = defaultdict(int)
        for path, flops in self.by_module.items():
            parts = path.split(".") if path else []
            for i in range(len(parts) + 1):
                out[".".join(parts[:i])] += flops
        return {
            p: v
            for p, v in sorted(out.items(), key=lambda kv: _path_key(kv[0]))
            if depth is None or (len(p.split(".")) if p else 0) <= depth
        }

    def module_total(self, path: str) -> int:
        """FLOPs of module ``path`` including its submodules."""
        prefix = path + "."
        return sum(v for p, v in self.by_module.items() if not path or p == path or p.startswith(prefix))

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "matmul": self.matmul,
            "other": self.other,
            "torch_builtin": self.torch_builtin,
            "training": self.training,
            "by_op": dict(self.by_op),
            "by_module": dict(self.by_module),
            "op_calls": dict(self.op_calls),
            "uncounted": dict(self.uncounted),
        }

    def table(self, depth: int | None = None, max_rows: int = 40) -> str:
        """Readable summary: totals, FLOPs by operation, and by module down to ``depth``."""
        total = max(self.total, 1)
        kind = "training step (forward + backward)" if self.training else "forward"
        lines = [
            f"FLOPs, {kind}: {format_flops(self.total)}",
            f"  matmul/conv (torch's formulas): {format_flops(self.matmul)} ({100 * self.matmul / total:.1f}%)",
            f"  other ops (softmax, gates, norms, pooling...): {format_flops(self.other)} "
            f"({100 * self.other / total:.1f}%)",
        ]
        if self.torch_builtin != self.matmul:
            lines.append(f"  unmodified FlopCounterMode reports: {format_flops(self.torch_builtin)}")
        lines += ["", f"{'operation':<44}{'calls':>7}{'FLOPs':>18}{'share':>8}"]
        ops = sorted(self.by_op.items(), key=lambda kv: (-kv[1], kv[0]))
        for op, v in ops[:max_rows]:
            lines.append(f"{op:<44}{self.op_calls.get(op, 0):>7}{format_flops(v):>18}{100 * v / total:>7.1f}%")
        if len(ops) > max_rows:
            lines.append(f"... {len(ops) - max_rows} more operations")
        if depth is None:
            depth = _default_depth(self.by_module)
        rows = self.inclusive(depth)
        lines += ["", f"{'module (incl. submodules)':<44}{'':>7}{'FLOPs':>18}{'share':>8}"]
        for i, (path, v) in enumerate(rows.items()):
            if i >= max_rows:
                lines.append(f"... {len(rows) - max_rows} more modules (use .inclusive() or .by_module)")
                break
            name = path if path else "(all)"
            lines.append(f"{name:<51}{format_flops(v):>18}{100 * v / total:>7.1f}%")
        if self.uncounted:
            listed = ", ".join(f"{k} x{n}" for k, n in sorted(self.uncounted.items()))
            lines += ["", f"WARNING: operations without a FLOP formula (counted as 0): {listed}"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _path_key(path: str):
    return [(0, int(p)) if p.isdigit() else (1, p) for p in path.split(".")] if path else []


def _default_depth(by_module: dict[str, int]) -> int:
    """The shallowest depth at which the module tree branches (at least 1), so that an
    ultralytics ``DetectionModel`` lists its layers ``model.0``, ``model.1``... by default."""
    paths = [p for p in by_module if p]
    for depth in range(1, 6):
        prefixes = {".".join(p.split(".")[:depth]) for p in paths if len(p.split(".")) >= depth}
        if len(prefixes) > 1:
            return depth
    return 1


# ----------------------------------------------------------------------------- counting


class _OpWatcher(TorchDispatchMode):
    """Sees every aten call that actually runs (after FlopCounterMode's decompositions) and
    notes the ones with arithmetic but no formula."""

    def __init__(self, uncounted: dict[str, int]):
        super().__init__()
        self.uncounted = uncounted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = getattr(func, "_overloadpacket", None)
        if packet is not None and packet not in _FORMULAS:
            name = _op_name(packet)
            if name not in _DATA_MOVEMENT and not name.startswith(("sym_", "_foreach_")):
                self.uncounted[name] = self.uncounted.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


class _ModuleAttribution:
    """Which module is running: a stack of module calls in the forward pass; in the backward
    pass, the module whose forward created the autograd node being executed.

    After each module's forward, the autograd nodes created since it started (sequence
    numbers at or above its start) that no inner module claimed are claimed for it, so every
    backward operation is charged to the module whose forward operation it differentiates.
    """

    def __init__(self, root: nn.Module | None):
        self.names: dict[nn.Module, str] = {}
        if root is not None:
            for path, m in root.named_modules(remove_duplicate=False):
                self.names.setdefault(m, path)
        self.stack: list[tuple[str, int]] = []
        self.owner: dict[Any, str] = {}  # autograd node -> module path
        self._handles: list = []

    def _name(self, module: nn.Module) -> str:
        if module not in self.names:  # outside the root: name it like torch's ModuleTracker
            base = type(module).__name__
            for path, m in module.named_modules(remove_duplicate=False):
                self.names.setdefault(m, f"{base}.{path}" if path else base)
        return self.names[module]

    def _pre(self, module, args):
        self.stack.append((self._name(module), torch._C._autograd._get_sequence_nr()))

    def _post(self, module, args, output):
        if not self.stack:
            return
        path, start = self.stack.pop()
        if not torch.is_grad_enabled():
            return
        todo = [t.grad_fn for t in tree_flatten(output)[0] if isinstance(t, Tensor) and t.grad_fn is not None]
        seen = set()
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node._sequence_nr() < start:  # created before this module started
                continue
            self.owner.setdefault(node, path)
            todo.extend(nxt for nxt, _ in node.next_functions if nxt is not None)

    def current(self) -> str:
        node = torch._C._current_autograd_node()
        if node is not None:  # backward
            return self.owner.get(node, "")
        return self.stack[-1][0] if self.stack else ""

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        self.owner.clear()  # the nodes hold saved tensors
        self.stack.clear()


class FlopCounter:
    """Context manager counting the FLOPs of everything run inside it, by operation and module.

    torch's ``FlopCounterMode`` with the formulas of this module added through its
    ``custom_mapping``. Operations are charged to the innermost module running them; in a
    backward pass, to the module whose forward created the autograd node being executed.

    Example::

        with FlopCounter(root=model) as fc:
            y = model(x)
        print(fc.report())

    Args:
        root: the module whose ``named_modules()`` paths name ``by_module`` entries (``""``
            is the root itself). Modules outside it are named ``"ClassName.child..."``.
        training: recorded in the report (whether the run is a training step).
    """

    def __init__(self, root: nn.Module | None = None, training: bool = False):
        self.root = root
        self.training = training
        self._records: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # matmul, other, calls
        self._torch_builtin = 0
        self._uncounted: dict[str, int] = {}
        self._where: _ModuleAttribution | None = None
        self._mode = None
        self._watcher = None
        self.counter_total = 0

    # the formula FlopCounterMode calls for one operation
    def _wrap(self, packet, formula: Callable):
        name = _op_name(packet)
        builtin = _TORCH_REGISTRY.get(packet)

        def counted(*args, out_val=None, **kwargs):
            mm, other = formula(args, kwargs, out_val)
            if builtin is not None:
                self._torch_builtin += int(builtin(*args, out_val=out_val, **kwargs))
            rec = self._records[(self._where.current(), name)]
            rec[0] += int(mm)
            rec[1] += int(other)
            rec[2] += 1
            return int(mm) + int(other)

        counted._get_raw = True  # FlopCounterMode passes tensors, not shapes
        return counted

    def __enter__(self):
        from torch.utils.flop_counter import FlopCounterMode

        mapping = {packet: self._wrap(packet, formula) for packet, formula in _FORMULAS.items()}
        self._where = _ModuleAttribution(self.root).__enter__()
        self._watcher = _OpWatcher(self._uncounted)
        self._watcher.__enter__()
        self._mode = FlopCounterMode(display=False, custom_mapping=mapping)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            self._mode.__exit__(*exc)
        finally:
            try:
                self._watcher.__exit__(*exc)
            finally:
                self._where.__exit__(*exc)
        self.counter_total = int(self._mode.get_total_flops())
        return False

    def report(self) -> FlopReport:
        by_op: dict[str, int] = defaultdict(int)
        calls: dict[str, int] = defaultdict(int)
        by_module: dict[str, int] = defaultdict(int)
        by_module_op: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        matmul = 0
        for (module, op), (mm, other, n) in self._records.items():
            by_op[op] += mm + other
            calls[op] += n
            by_module[module] += mm + other
            by_module_op[module][op] += mm + other
            matmul += mm
        total = sum(by_op.values())
        return FlopReport(
            total=total,
            matmul=matmul,
            by_op=dict(sorted(by_op.items(), key=lambda kv: (-kv[1], kv[0]))),
            by_module=dict(sorted(by_module.items(), key=lambda kv: _path_key(kv[0]))),
            by_module_op={m: dict(ops) for m, ops in by_module_op.items()},
            op_calls=dict(calls),
            torch_builtin=self._torch_builtin,
            uncounted=dict(self._uncounted),
            training=self.training,
        )


def _cuda_devices(tensors) -> list[int]:
    return sorted({t.device.index or 0 for t in tensors if isinstance(t, Tensor) and t.device.type == "cuda"})


def count_flops(module: nn.Module, *inputs, training: bool = False, input_grad: bool | None = None, **kwargs) -> FlopReport:
    """Count the FLOPs of ``module(*inputs, **kwargs)``, attention's own operations included.

    By default the module runs in eval mode under ``torch.no_grad()`` (an inference forward).
    With ``training=True`` it counts a training step instead: a train-mode forward (batch
    statistics in BatchNorm, dropout active) and the backward pass from ones on every
    floating output, producing the gradients of all trainable parameters and, when
    ``input_grad`` (default: True with ``training``) of the floating inputs, as for a
    module inside a network. The optimizer step is not counted.

    Counting changes nothing: each submodule's train/eval flag, every buffer (BatchNorm
    running statistics), parameter ``.grad`` and the global RNG state are as before, and the
    computation itself is the ordinary one.

    Keyword arguments other than ``training``/``input_grad`` go to the module's forward.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"count_flops: expected an nn.Module, got {type(module).__name__}")
    if input_grad is None:
        input_grad = training
    flags = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    flat_inputs, _ = tree_flatten((inputs, kwargs))
    params = list(module.parameters())
    saved_grads = [(p, p.grad) for p in params]
    devices = _cuda_devices(flat_inputs + params)
    counter = FlopCounter(root=module, training=training)
    try:
        with torch.random.fork_rng(devices=devices):
            module.train(training)
            if not training:
                with torch.no_grad(), counter:
                    module(*inputs, **kwargs)
            else:

                def prep(x):
                    if isinstance(x, Tensor) and x.is_floating_point():
                        return x.detach().requires_grad_(bool(input_grad))
                    return x

                inputs, kwargs = tree_map(prep, (inputs, kwargs))
                wrt = [p for p in params if p.requires_grad]
                wrt += [x for x in tree_flatten((inputs, kwargs))[0] if isinstance(x, Tensor) and x.requires_grad]
                with torch.enable_grad(), counter:
                    out = module(*inputs, **kwargs)
                    outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor) and t.requires_grad]
                    if not outs or not wrt:
                        raise ValueError(
                            "count_flops(training=True): the module has no output that depends on a trainable "
                            "parameter or input, so there is no backward pass to count"
                        )
                    for p in params:  # a fresh .grad is stored, not accumulated: no extra adds
                        p.grad = None
                    torch.autograd.backward(outs, grad_tensors=[torch.ones_like(t) for t in outs], inputs=wrt)
    finally:
        for p, g in saved_grads:
            p.grad = g
        for m, flag in flags:
            m.training = flag
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)
    report = counter.report()
    if report.total != counter.counter_total:  # the two bookkeepings must agree
        raise RuntimeError(
            f"count_flops: internal mismatch ({report.total} vs FlopCounterMode's {counter.counter_total})"
        )
    return report


def model_flops(
    model: nn.Module, imgsz: int | tuple[int, int] = 640, batch: int = 1, training: bool = False
) -> FlopReport:
    """FLOPs of a whole detector (e.g. an ultralytics ``DetectionModel``) on a dummy image.

    The image is zeros of shape (batch, ch, H, W) on the model's device and dtype; ``ch`` is
    the model YAML's ``ch`` or the first convolution's input channels. The count is for the
    model as given: BatchNorm layers not yet fused into convolutions count 2 FLOPs per element
    (ultralytics fuses them before inference, and its GFLOPs figure counts matrix products and
    convolutions only). ``by_module`` keys are ``named_modules()`` paths such as ``model.9.cv1``.
    """
    if isinstance(imgsz, int):
        h = w = imgsz
    else:
        h, w = (int(v) for v in imgsz)
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    ch = None
    yaml = getattr(model, "yaml", None)
    if isinstance(yaml, dict):
        ch = yaml.get("ch")
    if not ch:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        ch = conv.in_channels if conv is not None else 3
    image = torch.zeros(batch, int(ch), h, w, device=device, dtype=dtype)
    return count_flops(model, image, training=training, input_grad=False)
