"""Quantization (``quant.method=ptq|qat``): ``quantize_(model, QuantConfig(...))`` converts Embedding / Linear / GRU
modules to packed 16..2-bit ones; ``attach_fake_quant`` + ``QuantizationCallback`` train with fake quant (QAT).

Layout: ``config`` (QuantConfig and its checks), ``api`` (the verbs), ``callback`` (Lightning, QAT), ``technique``
(what the pipeline runs). The tensor math and runtime modules are the bottom layer ``recsys.nn``.
"""
from recsys.compress.quant.api import attach_fake_quant, calibrate, is_converted, plain_weight, quantize_
from recsys.compress.quant.callback import QuantizationCallback
from recsys.compress.quant.config import QuantConfig, check_quant, quant_summary

__all__ = ["QuantConfig", "QuantizationCallback", "attach_fake_quant", "calibrate", "check_quant", "is_converted",
           "plain_weight", "quant_summary", "quantize_"]
