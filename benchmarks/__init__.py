"""aaclip.benchmarks: throughput/latency per backend x precision x batch, and the runtime-loop overhead.

May import everything above it (train for the PyTorch rows, export, runtime).
"""
