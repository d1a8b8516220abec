"""aaclip.runtime: the lean camera loop that runs an exported artifact described by its manifest.

Owns: manifest reading/checking, backends (TensorRT, ONNX Runtime), sources, sinks, scoring, the loop.
May import: numpy, opencv, click, and optionally tensorrt/pycuda/onnxruntime. Never torch or open_clip,
and nothing else from aaclip: this package must run on a bare Jetson.
"""


def __getattr__(name: str):
    """``from aaclip.runtime import Detector``: the Python API, imported when asked for (the package stays light)."""
    if name in ("Detector", "Prediction"):
        from . import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'aaclip.runtime' has no attribute {name!r}")
