"""Detector building blocks written here (not attention modules): YOLOv7's E-ELAN, MP, SPPCSPC, RepConv."""

from .yolov7 import ELAN, SPPCSPC, ConvBNAct, MPDown, RepConv

__all__ = ["ConvBNAct", "ELAN", "MPDown", "SPPCSPC", "RepConv"]
