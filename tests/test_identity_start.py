"""Insertion into a trained detector: every module starts as the identity and still learns."""

import pytest
import torch

import yolo_attention
from yolo_attention.modules.gated import GatedAttention, identity_start

from _helpers import BUILTIN_NAMES


def _is_identity(m: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return all(torch.equal(m.train(mode)(x), x) for mode in (True, False))


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_declared_identity_start_matches_the_module(name):
    """``starts_as_identity`` is declared exactly by the modules whose fresh output is their input."""
    x = torch.randn(2, 32, 7, 9)
    m = yolo_attention.create_attention(name, 32)
    assert bool(getattr(m, "starts_as_identity", False)) == _is_identity(m, x)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_inserted_module_is_identity_and_gets_gradients(name):
    """The regression: A2, GC, Non-local and Criss-Cross inside a gamma=0 gate got no gradient at all
    (attn(x) - x is 0), so a fine-tuned detector never used them."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 7, 9)
    block = identity_start(yolo_attention.create_attention(name, 32), 32)
    assert _is_identity(block, x)
    block.train()
    (block(x) * torch.randn_like(x)).sum().backward()
    moved = [n for n, p in block.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert moved, f"{name}: no parameter gets a gradient after insertion"


@pytest.mark.parametrize("kwargs, gated", [({}, False), ({"zero_init": False}, True), ({"residual": False}, True)])
def test_a2_is_gated_only_when_it_does_not_start_as_identity(kwargs, gated):
    block = identity_start(yolo_attention.create_attention("a2", 32, **kwargs), 32)
    assert isinstance(block, GatedAttention) == gated


def test_gc_scale_fusion_is_gated():
    assert isinstance(identity_start(yolo_attention.create_attention("gc", 32, fusion="scale"), 32), GatedAttention)
    assert not isinstance(identity_start(yolo_attention.create_attention("gc", 32), 32), GatedAttention)
