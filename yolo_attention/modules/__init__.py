"""Attention modules. Importing this package registers every built-in module."""

from .bam import BAM
from .biformer import BiFormerBlock, BiLevelRoutingAttention
from .cbam import CBAM
from .coordatt import CoordAtt
from .double_attention import DoubleAttention
from .eca import ECA
from .ema import EMA
from .gam import GAM
from .helpers import LayerNorm2d, SafeBatchNorm2d, make_divisible
from .se import SE
from .simam import SimAM
from .triplet import TripletAttention

__all__ = [
    "SE",
    "DoubleAttention",
    "BAM",
    "BiLevelRoutingAttention",
    "BiFormerBlock",
    "CBAM",
    "ECA",
    "CoordAtt",
    "SimAM",
    "EMA",
    "GAM",
    "TripletAttention",
    "LayerNorm2d",
    "SafeBatchNorm2d",
    "make_divisible",
]
