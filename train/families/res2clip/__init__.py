"""Res2CLIP (SPEC-peers.md section 2), methods ``res2clip`` and ``res2clip-ft``: everything of the family
in this folder.

``family`` (registry entries, configs, default scores), ``model`` (the model, adapters, reference bank,
import of the official adapter checkpoints), ``bank`` (building reference banks into a model and their
size), ``trainer`` (the alternating optimizers), ``flops`` (analytic FLOPs of its graph).
"""
