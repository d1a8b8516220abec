"""Stage-1 visual features from frozen CLIP with V-V attention in its last blocks (SPEC section 6).

The same frozen weights are reused (no copy): blocks at or after ``start`` run ``x + attn_vv(ln_1(x))``
then their usual MLP, where ``attn_vv`` applies softmax(scale * V V^T) to V per head (DPAM / CLIP
Surgery). Two variants, chosen with ``mode``:

- ``"tokens"``: attention over the tokens of each image (the paper's / DPAM's intent);
- ``"reference"``: what the reference code computes: it feeds (tokens, batch, width) tensors to a
  module that treats the first axis as the batch, so attention runs across the images of the batch
  at each token position (with batch 1 it degenerates to the value path). Default, because the
  published numbers were produced with it (docs/method-choices.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

VV_MODES = ("reference", "tokens")


def vv_attention(block, x: torch.Tensor) -> torch.Tensor:
    """V-V self-attention of an OpenCLIP block's nn.MultiheadAttention on (N, S, D); attends over S."""
    attn = block.attn
    width = x.shape[-1]
    heads = attn.num_heads
    head_dim = width // heads
    v = F.linear(x, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None)
    n, s, _ = v.shape
    v = v.reshape(n, s, heads, head_dim).transpose(1, 2)  # (N, H, S, Dh)
    weights = torch.softmax((v @ v.transpose(-2, -1)) * head_dim**-0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(n, s, width)
    return attn.out_proj(out)


def vv_block(block, x: torch.Tensor, mode: str) -> torch.Tensor:
    """One block with its attention replaced by V-V attention; x is batch-first (B, L, D)."""
    h = block.ln_1(x)
    if mode == "reference":
        a = vv_attention(block, h.transpose(0, 1)).transpose(0, 1)  # attends across the batch axis
    elif mode == "tokens":
        a = vv_attention(block, h)
    else:
        raise ValueError(f"unknown V-V attention mode {mode!r}: use one of {VV_MODES}")
    x = x + block.ls_1(a)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@torch.no_grad()
def stage1_visual_features(clip, images: torch.Tensor, levels, vv_blocks: int, mode: str) -> list[torch.Tensor]:
    """Per level (B, L, E): V-V patch tokens -> ln_post -> proj -> L2-norm, plus the normalized image embedding."""
    visual = clip.visual
    blocks = visual.transformer.resblocks
    start = len(blocks) - vv_blocks
    seq_first = not getattr(visual.transformer, "batch_first", True)
    x = visual._embeds(images)
    wanted = set(levels)
    taps = []
    for i, block in enumerate(blocks):
        if i >= start:
            x = vv_block(block, x, mode)
        else:
            x = block(x.transpose(0, 1), attn_mask=None).transpose(0, 1) if seq_first else block(x, attn_mask=None)
        if i + 1 in wanted:
            taps.append(x[:, 1:])
    image_embedding = F.normalize(clip.encode_image(images), dim=-1).unsqueeze(1)
    return [F.normalize(visual.ln_post(t) @ visual.proj, dim=-1) + image_embedding for t in taps]
