"""Attention modules. Importing this package registers every built-in module."""

from .bam import BAM
from .biformer import BiFormerBlock, BiLevelRoutingAttention
from .cpca import CPCA
from .double_attention import DoubleAttention
from .ela import ELA
from .helpers import LayerNorm2d, SafeBatchNorm2d, make_divisible
from .lska import LSKA
from .mlca import MLCA
from .se import SE
from .sge import SpatialGroupEnhance
from .shuffle import ShuffleAttention
from .sk import SKAttention

__all__ = [
    "SE",
    "DoubleAttention",
    "BAM",
    "BiLevelRoutingAttention",
    "BiFormerBlock",
    "SKAttention",
    "ShuffleAttention",
    "SpatialGroupEnhance",
    "ELA",
    "MLCA",
    "CPCA",
    "LSKA",
    "LayerNorm2d",
    "SafeBatchNorm2d",
    "make_divisible",
]
