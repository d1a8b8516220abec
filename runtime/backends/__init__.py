"""Backends: one small runner interface (activate / infer / deactivate) shared by TensorRT and ONNX Runtime."""
