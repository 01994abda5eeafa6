"""Process memory: hand freed heap back to the OS between layers, and report peak RSS.

Measured (bench/serving_memory.md): glibc keeps each layer's freed temporaries as fragmented
heap, so without :func:`release_freed_memory` a party's resident memory ratchets up over the
first (widest) layers although the next layer needs no more (resnet18-cifar, batch 16, gloo:
1.9 GB per party); calling it after every layer brings resident memory between layers back to
the model plus the live activations, so the peak is that of the widest single layer, at no
measurable cost in time. (A fixed ``M_MMAP_THRESHOLD`` of 1 MiB lowers the peak further but
costs 2.5x system time: not used.)
"""

from __future__ import annotations

import ctypes
import functools
import resource


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back
        return None


def release_freed_memory() -> None:
    """glibc ``malloc_trim(0)``: return free heap pages to the OS (no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB (``getrusage`` ``ru_maxrss``, KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
