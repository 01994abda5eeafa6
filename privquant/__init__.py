"""PrivQuant: communication-efficient two-party private inference of quantized networks.

Public API (the CLI is a thin layer over it)::

    import privquant
    art = privquant.quantize("resnet8", calib_images, bits="w4a4")   # or an nn.Module
    art.save("resnet8.pq")
    art = privquant.load("resnet8.pq")
    art.evaluate(images, labels)      # FP32 / fake-quant / integer-program top-1
"""

__version__ = "0.1.0"

from privquant.errors import PrivQuantError  # noqa: E402


def __getattr__(name):
    # lazy: keep `import privquant` light (no torch.fx/quant import until needed)
    if name in ("quantize", "load", "QuantizedModel"):
        from privquant import quantized

        return getattr(quantized, name)
    if name in ("BitAssignment", "LayerBits", "parse_bits"):
        from privquant.quant import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'privquant' has no attribute {name!r}")


__all__ = [
    "BitAssignment",
    "LayerBits",
    "PrivQuantError",
    "QuantizedModel",
    "load",
    "parse_bits",
    "quantize",
]
