"""AA-CLIP (CVPR 2025; SPEC.md), method ``aa-clip``: everything of the family in this folder.

``family`` (its registry entry and default score), ``model`` (adapters on the frozen OpenCLIP towers,
text anchors), ``adapters``, ``trainer`` (two-stage training), ``official`` (import of the reference
code's checkpoints), ``flops`` (analytic FLOPs of its graph).
"""
