"""aaclip.train.common: what several model families share.

Owns: the OpenCLIP backbone (``backbone``: build, weights, random tiny weights, vision geometry;
``model_configs/``; OpenAI's TorchScript archives read without running their code,
``torchscript_archive``), the common config fields (``config``: ``ModelConfig``, ``BackboneConfig``),
constants (CLIP mean/std, prompt templates, blur), prompts, image pre-processing, map math (``maps``), the
dual-path / V-V attention (``dual_path``, ``vv_attention``), the peers' numeric ops (``peer_ops``), the
deploy copy (``deploy``), the training dataset, losses, progress, the files of a checkpoint folder
(``checkpoint_files``), the training driver (``driver``) and the tower's FLOP count (``flops``).
May import: torch, open_clip, aaclip.contract, aaclip.data; never a family (``aaclip.train.families``).
"""
