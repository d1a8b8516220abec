"""Dual-path forward of OpenCLIP visual blocks: the original path plus V-V attention (SPEC-peers 1.3, 2.1).

``DualPathBlock`` runs one OpenCLIP ``ResidualAttentionBlock`` with its own weights and returns what the
peer methods need from it: ``mid = x + attn(ln_1(x))`` (before the MLP: CLIP-AD's taps read it, see
below), ``out = mid + mlp(ln_2(mid))`` (the block's usual output) and, when asked, the V-V attention
``vv = out_proj(softmax(v v^T / sqrt(d)) v)`` of the same ``ln_1(x)`` (per head; the block's value
projection with its bias, its output projection with its bias). The surgery streams built from them:

- ``surgery_streams`` (CLIP-AD, ``CA:open_clip/transformer.py:220-240``): every block has the V-V path;
  the surgery stream restarts at the first block of each of 4 stages (N/4 blocks) and sums that
  stage's V-V outputs (no MLP, no input residual); taps after blocks N/4, N/2, 3N/4, N. The "original"
  stream the official code returns at the first three taps is, because of an in-place residual add,
  the stream half-way through the NEXT block (``mid`` of block b+1), and only the last tap is x_N; that
  is reproduced, so official SDP+ checkpoints keep their meaning (docs/method-choices.md).
- ``dpam_streams`` (Res2CLIP, ``R2:clip_lib/AnomalyCLIP.py``): the V-V path starts at block ``start``
  with ``s = x_{start-1} + vv`` (input residual kept), then ``s += vv`` in every later block, never
  reset; taps read ``s``.

The same module is the deploy form: ``dual_path_deploy`` copies the image tower and replaces its blocks
by ``DualPathBlock``s (module scopes kept for INT8 quantization), with the attention and MLP weights in
half precision for FP16 (LayerNorm, softmax and the residual streams stay FP32, casts explicit, as
``deploy.HalfBlock``). Reshapes use -1 for the batch and the static token count, so one traced graph
serves every batch size.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aaclip.train.common.deploy import PRECISIONS, visual_copy


class DualPathBlock(nn.Module):
    """One OpenCLIP visual block (shared weights) -> ``(mid, out, vv)``; see the module docstring."""

    def __init__(self, block: nn.Module, seq_len: int):
        super().__init__()
        if isinstance(block, DualPathBlock):
            raise ValueError("the block is already a DualPathBlock")
        if hasattr(block, "ln_1_kv"):
            raise ValueError("cross-attention blocks are not part of the image tower")
        if not isinstance(block.ls_1, nn.Identity) or not isinstance(block.ls_2, nn.Identity):
            raise ValueError("LayerScale blocks are not supported by the dual-path forward")
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            raise ValueError("the dual-path forward needs an nn.MultiheadAttention with packed q/k/v weights")
        self.ln_1, self.attn, self.ln_2, self.mlp = block.ln_1, attn, block.ln_2, block.mlp
        self.heads = attn.num_heads
        self.width = attn.embed_dim
        self.head_dim = self.width // self.heads
        self.scale = float(self.head_dim) ** -0.5
        self.seq_len = int(seq_len)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, self.seq_len, self.heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(q * self.scale, k.transpose(-2, -1)).float()
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(-1, self.seq_len, self.width)
        return F.linear(out, self.attn.out_proj.weight, self.attn.out_proj.bias).float()

    def forward(self, x: torch.Tensor, vv: bool = True) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        dtype = self.attn.in_proj_weight.dtype  # half in an FP16 deploy copy
        h = self.ln_1(x.float()).to(dtype)
        qkv = F.linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias)
        q, k, v = (self._heads(t) for t in qkv.chunk(3, dim=-1))
        mid = x + self._attend(q, k, v)
        out = mid + self.mlp(self.ln_2(mid.float()).to(dtype)).float()
        return mid, out, self._attend(v, v, v) if vv else None


def dual_blocks(visual: nn.Module) -> list[DualPathBlock]:
    """The visual blocks as ``DualPathBlock``s: the deploy copy's own, or views sharing the weights."""
    seq_len = int(visual.grid_size[0]) * int(visual.grid_size[1]) + 1
    return [b if isinstance(b, DualPathBlock) else DualPathBlock(b, seq_len) for b in visual.transformer.resblocks]


def surgery_streams(visual: nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """CLIP-AD's two streams at its 4 taps: (surgery sums s_j, "original" streams o_j), each (B, N, W).

    Stage j covers blocks (j-1)N/4+1 .. jN/4; s_j is the sum of their V-V outputs. o_j is ``mid`` of block
    jN/4 + 1 for j < 4 (the official in-place trap) and x_N for j = 4.
    """
    blocks = dual_blocks(visual)
    depth = len(blocks)
    if depth % 4:
        raise ValueError(f"CLIP-AD cuts the tower into 4 stages: {depth} blocks is not a multiple of 4")
    stage = depth // 4
    x = visual._embeds(images)
    s: Optional[torch.Tensor] = None
    surgery, original = [], []
    for b, block in enumerate(blocks, start=1):
        mid, x, vv = block(x, vv=True)
        if len(original) < len(surgery):  # the previous block was a tap: its "original" is this mid
            original.append(mid)
        s = vv if (b - 1) % stage == 0 else s + vv
        if b % stage == 0:
            surgery.append(s)
    original.append(x)
    return surgery, original


def dpam_streams(visual: nn.Module, images: torch.Tensor, start: int,
                 taps: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Res2CLIP's V-V stream at ``taps`` (1-based blocks >= ``start``), each (B, N, W), and x_N (B, N, W)."""
    if min(taps) < start:
        raise ValueError(f"taps {list(taps)} must not precede the V-V start block {start}")
    x = visual._embeds(images)
    s: Optional[torch.Tensor] = None
    out = []
    for b, block in enumerate(dual_blocks(visual), start=1):
        _, y, vv = block(x, vv=b >= start)
        if b == start:
            s = x + vv
        elif b > start:
            s = s + vv
        x = y
        if b in taps:
            out.append(s)
    return out, x


def dual_path_deploy(model: nn.Module, precision: str = "fp32", drop: Sequence[str] = ()) -> nn.Module:
    """The export copy of a dual-path family model: ``deploy.visual_copy`` with ``DualPathBlock`` blocks,
    their attention and MLP weights in half precision for ``fp16``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out = visual_copy(model, drop)
    visual = out.clip.visual
    blocks = visual.transformer.resblocks
    seq_len = int(visual.grid_size[0]) * int(visual.grid_size[1]) + 1
    for i, block in enumerate(blocks):
        if precision == "fp16":
            block.attn.half()
            block.mlp.half()
        blocks[i] = DualPathBlock(block, seq_len)
    return out.eval().requires_grad_(False)


__all__ = ["DualPathBlock", "dual_blocks", "surgery_streams", "dpam_streams", "dual_path_deploy"]
