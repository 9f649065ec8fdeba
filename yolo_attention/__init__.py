"""yolo-attention: trustworthy attention modules for YOLO detectors.

``import yolo_attention`` registers every module and, when ultralytics is installed, makes
them available to ultralytics model YAMLs.
"""

from .modules import (
    BAM,
    SE,
    BiFormerBlock,
    BiLevelRoutingAttention,
    CrissCrossAttention,
    DeformableAttention,
    DoubleAttention,
    GlobalContext,
    MHSA,
    NonLocalBlock,
    PolarizedSelfAttention,
    make_divisible,
)
from .registry import AttentionInfo, AttentionTap, create_attention, get_attention_info, list_attention, register_attention

__version__ = "0.1.0"

from .integrations.ultralytics import register as _register_ultralytics  # noqa: E402

_register_ultralytics()

from .integrations.classic import install_import_hook as _hook_classic  # noqa: E402

_hook_classic()  # the `yolov5` package's models.yolo, when (and if) it is imported

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
    "AttentionInfo",
    "AttentionTap",
    "create_attention",
    "get_attention_info",
    "list_attention",
    "register_attention",
    "make_divisible",
]
