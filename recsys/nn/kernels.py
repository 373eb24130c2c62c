"""The one numba decorator (and the row prefetch) for the hand-written optimizer kernels (``recsys.nn.optim.AdagradM``,
``recsys.tasks.rowwise_adam.RowwiseAdam``), so their compile flags and the reasons for them live in one place.

``error_model="numpy"`` drops numba's per-division zero check, which kept LLVM from vectorising the per-element loops;
the fast-math subset (no ``nnan`` / ``ninf``: a NaN gradient still propagates as NaN) lets it use reciprocal / fused
multiply-add forms. ``cache=True``: compiled once per machine; ``nogil``: the GIL is released while a kernel runs.
Kernels cast their scalars to the array's dtype so float32 tables are updated in float32 SIMD lanes.
"""
from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

FASTMATH = {"arcp", "contract", "afn", "nsz"}
kernel = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FASTMATH)


@intrinsic
def _prefetch(typingctx, arr, i, c):   # numba intrinsic signature
    """LLVM's prefetch of ``arr[i, c]``'s cache line (for writing, keep in all cache levels)."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        at = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:])]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, at, wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [i8p, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, i, c), codegen


# How many rows ahead the row kernels prefetch. Their rows are random reads of tables larger than the caches (ML-20M
# size: 138,493 x 64 float32 + two moments, 106 MB), so each row waited on memory in turn: with prefetch 4 rows ahead,
# one row-wise Adam call on 2,048 random rows, one thread, this machine: 138,493 x 64 1,062 -> 549 us, 138,493 x 32
# 483 -> 355 us (8 rows ahead was no better).
AHEAD = 4


@numba.njit(cache=True, nogil=True)
def prefetch_row(a, i):
    """Prefetch row ``i`` of the 2-D array ``a``, one call per 64-byte line."""
    for c in range(0, a.shape[1], max(1, 64 // a.itemsize)):
        _prefetch(a, i, c)

