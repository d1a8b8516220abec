"""aaclip.train: the AA-CLIP model on OpenCLIP, data tools, two-stage training and evaluation.

Owns: model (adapters, anchors, inference math), datasets and synthetic data, losses, loops, evaluation
(the metrics themselves are ``aaclip.contract.metrics``).
May import: torch, open_clip, numpy, and aaclip.runtime's small torch-free utilities (files, logging).
Importing this package itself is cheap: submodules import torch only where they need it.
"""
