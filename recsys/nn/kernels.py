"""The one numba decorator for the hand-written optimizer kernels (``recsys.nn.optim.AdagradM``,
``recsys.tasks.rowwise_adam.RowwiseAdam``), so their compile flags and the reasons for them live in one place.

``error_model="numpy"`` drops numba's per-division zero check, which kept LLVM from vectorising the per-element loops;
the fast-math subset (no ``nnan`` / ``ninf``: a NaN gradient still propagates as NaN) lets it use reciprocal / fused
multiply-add forms. ``cache=True``: compiled once per machine; ``nogil``: the GIL is released while a kernel runs.
Kernels cast their scalars to the array's dtype so float32 tables are updated in float32 SIMD lanes.
"""
from __future__ import annotations

import numba

FASTMATH = {"arcp", "contract", "afn", "nsz"}
kernel = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FASTMATH)
