"""Attention modules. Importing this package registers every built-in module."""

from .bam import BAM
from .biformer import BiFormerBlock, BiLevelRoutingAttention
from .criss_cross import CrissCrossAttention
from .deformable_attention import DeformableAttention
from .double_attention import DoubleAttention
from .global_context import GlobalContext
from .helpers import LayerNorm2d, SafeBatchNorm2d, make_divisible
from .mhsa import MHSA
from .non_local import NonLocalBlock
from .polarized import PolarizedSelfAttention
from .se import SE

__all__ = [
    "SE",
    "DoubleAttention",
    "BAM",
    "BiLevelRoutingAttention",
    "BiFormerBlock",
    "GlobalContext",
    "NonLocalBlock",
    "CrissCrossAttention",
    "PolarizedSelfAttention",
    "MHSA",
    "DeformableAttention",
    "LayerNorm2d",
    "SafeBatchNorm2d",
    "make_divisible",
]
