"""Attention modules. Importing this package registers every built-in module."""

from .bam import BAM
from .biformer import BiFormerBlock, BiLevelRoutingAttention
from .cbam import CBAM
from .coordatt import CoordAtt
from .cpca import CPCA
from .double_attention import DoubleAttention
from .eca import ECA
from .ela import ELA
from .ema import EMA
from .gam import GAM
from .helpers import LayerNorm2d, SafeBatchNorm2d, make_divisible
from .lska import LSKA
from .mlca import MLCA
from .se import SE
from .sge import SpatialGroupEnhance
from .shuffle import ShuffleAttention
from .simam import SimAM
from .sk import SKAttention
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
