"""aaclip.calibration: score normalization and alarm thresholds from normal frames; reduced precision
behind an accuracy gate.

Owns: threshold estimation (``thresholds``), manifest calibration updates (``score_calibration``), running
frames as the loop does (``inference``, ``inputs``), INT8 Q/DQ graphs (``int8``) and OpenVINO's mixed BF16
(``bf16``) behind one gate (``gate``), the accuracy search of which blocks stay FP32 (``search``), plots,
``aaclip-calibrate``.
May import: aaclip.contract, aaclip.data (records, synthetic frames), aaclip.runtime (backends, manifest),
aaclip.export (engine build), numpy; onnxruntime for INT8. Never aaclip.train: it runs where torch is not.
"""
