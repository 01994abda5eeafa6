"""PrivQuant: communication-efficient two-party private inference of quantized networks.

Public API (the CLI is a thin layer over it)::

    import privquant
    art = privquant.quantize("resnet8", calib_images, bits="w4a4")   # or an nn.Module
    art.save("resnet8.pq")
    art = privquant.load("resnet8.pq")
    art.evaluate(images, labels)      # FP32 / fake-quant / integer-program top-1
    res = privquant.infer(art, images[:4])   # private inference: server, client, dealer processes
    res["labels"], res["identical"], res["report"].table()
    with privquant.Client("host:29500", server_key=FP, dealer_key=FP2, expect_hash=H) as c:
        c.infer(images)                # a session against a network server (privquant serve)
    r = privquant.search("resnet8", calib_images, budget_mb=4.8)   # mixed-precision search
    r.assignment.save("a.json"); r.predicted                          # exact declared cost
"""

__version__ = "0.1.0"

from privquant.errors import PrivQuantError


def __getattr__(name):
    # lazy: keep `import privquant` light (no torch.fx/quant import until needed)
    if name in ("quantize", "load", "QuantizedModel"):
        from privquant import quantized

        return getattr(quantized, name)
    if name == "infer":
        from privquant.launch import infer

        return infer
    if name in ("Server", "Client", "Dealer", "Policy"):
        from privquant import serving

        return getattr(serving, name)
    if name in ("search", "Searcher"):
        from privquant.quant import search

        return getattr(search, name)
    if name in ("BitAssignment", "LayerBits", "parse_bits"):
        from privquant.quant import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'privquant' has no attribute {name!r}")


__all__ = [
    "BitAssignment",
    "Client",
    "Dealer",
    "LayerBits",
    "Policy",
    "PrivQuantError",
    "QuantizedModel",
    "Searcher",
    "Server",
    "load",
    "parse_bits",
    "quantize",
    "search",
]
