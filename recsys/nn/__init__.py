"""Bottom layer of runtime modules shared by compression and export: quantized tensors and packing (``qtensor``),
quantized Embedding / Linear / GRU (``quantized``), low-rank factorised layers (``factorized``). Imports nothing above
``torch`` (see docs/architecture.md)."""
