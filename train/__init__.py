"""aaclip.train: model families on OpenCLIP (AA-CLIP first), data tools, training and evaluation.

Owns: the model-family registry (``families``: method name -> config, model, deploy module, trainer,
importers), checkpoints of every family (``checkpoint``), AA-CLIP itself (model, adapters, anchors,
inference math, two-stage training), datasets and synthetic data, losses, evaluation (the metrics themselves
are ``aaclip.contract.metrics``).
May import: torch, open_clip, numpy, aaclip.contract and aaclip.runtime (overlay drawing).
Importing this package itself is cheap: submodules import torch only where they need it.
"""
