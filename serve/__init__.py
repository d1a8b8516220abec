"""aaclip.serve: ``aaclip-serve``, a real Triton Inference Server for machines without NVIDIA's Triton container.

Owns: serving an exported artifact or model repository through NVIDIA PyTriton (which bundles tritonserver)
with the artifact's runner (ONNX Runtime, TensorRT) behind the contract's model name, tensors and manifest
parameters (``cli``); starting and stopping that server as a separate process from another environment
(``launch``, standard library only: the tests and ``aaclip-bench`` use it).
May import: aaclip.contract, aaclip.runtime; nvidia-pytriton, onnxruntime (its own virtual environment: PyTriton
pins numpy < 2). Never torch.
"""
