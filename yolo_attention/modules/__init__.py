"""Attention modules. Importing this package registers every built-in module."""

from .bam import BAM
from .biformer import BiFormerBlock, BiLevelRoutingAttention
from .cbam import CBAM
from .coordatt import CoordAtt
from .cpca import CPCA
from .criss_cross import CrissCrossAttention
from .deformable_attention import DeformableAttention
from .double_attention import DoubleAttention
from .eca import ECA
from .ela import ELA
from .ema import EMA
from .gam import GAM
from .global_context import GlobalContext
from .helpers import LayerNorm2d, SafeBatchNorm2d, make_divisible
from .lska import LSKA
from .mhsa import MHSA
from .mlca import MLCA
from .non_local import NonLocalBlock
from .polarized import PolarizedSelfAttention
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
