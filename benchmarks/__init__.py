"""aaclip.benchmarks: throughput/latency per backend x precision x batch, and the runtime-loop overhead.

May import everything below it: aaclip.train for the PyTorch rows and model families, export, calibration,
runtime, serve, data, contract.
"""
