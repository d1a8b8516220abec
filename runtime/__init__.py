"""aaclip.runtime: the lean camera loop that runs an exported artifact described by its manifest.

Owns: the backend registry and runners (``backends/``: ONNX Runtime, OpenVINO, TensorRT, Triton), video
sources and capture (``sources``, ``capture``), per-frame decisions (``decide``), the loop (``loop``),
drawing (``overlay``), sinks (``sinks``: events, evidence, video, display), the line outputs (the web view
``web`` over the live state of ``monitor``, ``/metrics`` ``metrics``, ``mqtt``, ``webhook``), the station file
(``station/``), a station's run and SIGHUP reload (``service``), systemd notify and unit (``systemd``), the
``Detector`` Python API (``detector``) and ``aaclip-runtime`` (``cli``).
May import: aaclip.contract (manifest, score, feeds, files); numpy, opencv, click; optionally tensorrt,
pycuda, onnxruntime, openvino, tritonclient, prometheus_client, paho-mqtt. Never torch or open_clip: it
runs on a bare Jetson.
"""


def __getattr__(name: str):
    """``from aaclip.runtime import Detector``: the Python API, imported when asked for (the package stays light)."""
    if name in ("Detector", "Prediction"):
        from . import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'aaclip.runtime' has no attribute {name!r}")
