"""aaclip.export: trained checkpoint -> one ONNX graph (+FP16 graph) -> TensorRT engine, with manifest.

Owns: the deployable graph wrapper (``graph``; the in-graph resize ``resize``), ONNX export and FP16
conversion, engine builders (``engine``), the manifest of an export (``manifest_builder``), the PyTorch
reference runner and parity verifier (``reference``, ``verify``), replacing an artifact with its manifest
(``replace``), Triton model repositories (``triton_repo``), ``aaclip-export``.
May import: aaclip.contract, aaclip.data (synthetic frames), aaclip.runtime (backends), aaclip.train
(checkpoints, families); torch, onnx.
"""
