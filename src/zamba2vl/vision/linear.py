"""Former home of the low-precision matmul policy; it now lives in ``zamba2vl.ops.precision`` (one copy for the
vision tower, the Mamba2 mixers, the SSD scan and the shared transformer blocks). These names are re-exported for
code that still imports them from here. To force the plain low-precision path, set
``zamba2vl.ops.precision.FORCE_NATIVE_LOW_PRECISION`` (setting a copy of it here would have no effect).
"""

from __future__ import annotations

from zamba2vl.ops.precision import compute_dtype, cpu_has_native_gemm, linear

_cpu_has_native = cpu_has_native_gemm  # the old private name (pipeline.auto_dtype used it)

__all__ = ["compute_dtype", "linear"]
