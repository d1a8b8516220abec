"""aaclip.train: model families on OpenCLIP, their training and evaluation.

Owns: what families share (``common``: backbone, configs, maps, dual-path attention, dataset, losses, the
training driver, ...), the model-family registry and one folder per family (``families``: ``aa_clip``,
``clip_ad``, ``res2clip``, each with its config, model, trainer, importer, FLOPs and registry entry),
loading checkpoints of every family (``checkpoint``), evaluation (``evaluate``; the metrics themselves are
``aaclip.contract.metrics``), which official behaviours a peer config reproduces (``fidelity``),
``aaclip-train`` and ``aaclip-eval``. The data tools are ``aaclip.data``.
May import: torch, open_clip, numpy, aaclip.contract, aaclip.data and aaclip.runtime (overlay drawing).
Importing this package itself is cheap: submodules import torch only where they need it.
"""
