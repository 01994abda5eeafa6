"""Public geometry of window ops (conv, pooling): ``pair`` and output sizes."""

from __future__ import annotations


def pair(v) -> tuple[int, int]:
    """``v`` as an ``(h, w)`` pair of ints (an int means both)."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_out_hw(h: int, w: int, kernel, stride, padding) -> tuple[int, int]:
    """Output height and width of a window op with zero padding (no dilation, floor mode)."""
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
