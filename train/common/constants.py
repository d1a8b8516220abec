"""Constants of the method: one source of truth for normalization, prompts and post-processing.

Everything here is restated from SPEC.md (AA-CLIP, CVPR 2025); the export graph and the training code
both import it, so the deployed pre/post-processing cannot drift from the trained one.
"""
from __future__ import annotations

# CLIP image normalization (OpenAI CLIP statistics), RGB order.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Prompt ensemble (SPEC section 3): every state in every template.
NORMAL_STATES = ("{}", "a {}", "the {}")
ABNORMAL_STATES = (
    "a damaged {}",
    "a broken {}",
    "a {} with flaw",
    "a {} with defect",
    "a {} with damage",
)
TEMPLATES = ("{}.", "a photo of {}.")

# Similarity scale of the segmentation logits (SPEC section 5: S_i = 100 * V_i T).
LOGIT_SCALE = 100.0

# Gaussian blur of the per-level maps at inference, per domain: (kernel size, sigma).
BLUR = {"industrial": (7, 1.0), "medical": (9, 1.5)}
# Image score = w * norm(max map) + (1 - w) * norm(cls score), per domain (SPEC section 5).
MAP_WEIGHT = {"industrial": 0.5, "medical": 1.0}
DOMAINS = tuple(BLUR)

# Defaults of the architecture (SPEC sections 2-4) and of V-V attention (section 6).
ADAPTER_LAMBDA = 0.1
TEXT_ADAPTER_DEPTH = 3  # of 12 text blocks in ViT-L-14-336
IMAGE_ADAPTER_DEPTH = 6  # of 24 visual blocks
NUM_LEVELS = 4
VV_BLOCKS_FRACTION = 19 / 24  # last 19 of 24 visual blocks use V-V attention in stage 1


def default_levels(depth: int, num_levels: int = NUM_LEVELS) -> tuple[int, ...]:
    """1-based block indices tapped for the feature levels: the outputs at 1/4, 2/4, 3/4, 4/4 depth."""
    if depth < num_levels:
        raise ValueError(f"a {depth}-block tower cannot provide {num_levels} feature levels")
    return tuple(round(depth * (i + 1) / num_levels) for i in range(num_levels))


def default_adapter_depth(depth: int, reference_depth: int, reference_blocks: int) -> int:
    """Adapter depth scaled with the tower: 3 of 12 text blocks, 6 of 24 visual blocks (at least 1)."""
    return max(1, round(depth * reference_blocks / reference_depth))


def default_vv_blocks(depth: int) -> int:
    """Number of trailing visual blocks given V-V attention in stage 1 (19 of 24 for ViT-L)."""
    return max(1, min(depth, round(depth * VV_BLOCKS_FRACTION)))
