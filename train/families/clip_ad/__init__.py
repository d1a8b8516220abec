"""CLIP-AD (SPEC-peers.md section 1), methods ``clip-ad`` (SDP) and ``clip-ad-plus`` (SDP+): everything of
the family in this folder.

``family`` (registry entries, configs, default scores), ``model`` (the model, its text anchors with
representative vectors, import of the official ``linear_layers`` checkpoints), ``trainer`` (SDP+
training), ``flops`` (analytic FLOPs of its graph).
"""
