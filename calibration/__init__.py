"""aaclip.calibration: score normalization and alarm thresholds from normal frames; INT8 Q/DQ graphs.

Owns: threshold estimation, manifest calibration updates, post-training quantization with its gate.
May import: aaclip.runtime (backends, manifest), aaclip.export (engine build), numpy; onnxruntime for INT8.
"""
