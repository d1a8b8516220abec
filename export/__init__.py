"""aaclip.export: trained checkpoint -> one ONNX graph (+FP16 graph) -> TensorRT engine, with manifest.

Owns: the deployable graph wrapper, ONNX export, FP16 conversion, engine builders, parity verifier.
May import: aaclip.train (model, checkpoint), aaclip.runtime (manifest, backends), torch, onnx.
"""
