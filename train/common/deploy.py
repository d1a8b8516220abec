"""Export-ready copies of family models: attention with batch-agnostic reshapes, optional FP16 blocks.

A family's deploy module (``Family.deploy``, what export folds into the graph) is usually
``deploy_copy(model, precision)``: the model without CLIP's text tower, whose visual blocks run
``ExportAttention`` instead of ``nn.MultiheadAttention`` (same weights, plain MatMul/Softmax with the batch
as ``-1`` in every reshape, so the traced graph is correct for any batch size) and, for FP16, are
``HalfBlock``s: Linear/attention/MLP in half precision while LayerNorm, softmax and the residual stream
stay FP32, with an explicit Cast at every boundary (what TensorRT's strongly typed mode expects).
Plain torch modules: they live here so that families (train layer) can build on them.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "fp16")


class ExportAttention(nn.Module):
    """Self-attention with an ``nn.MultiheadAttention``'s weights, written with batch-agnostic reshapes.

    Called like ``nn.MultiheadAttention`` by OpenCLIP's ``ResidualAttentionBlock`` (batch first) and
    returns ``(output, None)``. With ``compute_dtype=float16`` the projections and both attention MatMuls
    run in half precision and the softmax in FP32.
    """

    def __init__(self, mha: nn.MultiheadAttention, seq_len: int, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not mha.batch_first:
            raise ValueError("ExportAttention expects a batch-first nn.MultiheadAttention (OpenCLIP's default)")
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise ValueError("ExportAttention supports packed q/k/v projections only")
        self.heads = mha.num_heads
        self.width = mha.embed_dim
        self.head_dim = mha.embed_dim // mha.num_heads
        self.seq_len = seq_len
        self.scale = float(self.head_dim) ** -0.5
        self.compute_dtype = compute_dtype
        self.in_proj_weight = nn.Parameter(mha.in_proj_weight.detach().to(compute_dtype), requires_grad=False)
        bias = mha.in_proj_bias
        self.in_proj_bias = None if bias is None else nn.Parameter(bias.detach().to(compute_dtype), requires_grad=False)
        self.out_weight = nn.Parameter(mha.out_proj.weight.detach().to(compute_dtype), requires_grad=False)
        out_bias = mha.out_proj.bias
        self.out_bias = (None if out_bias is None
                         else nn.Parameter(out_bias.detach().to(compute_dtype), requires_grad=False))

    def forward(self, q_x: torch.Tensor, k_x: Optional[torch.Tensor] = None, v_x: Optional[torch.Tensor] = None,
                need_weights: bool = False, attn_mask: Optional[torch.Tensor] = None):
        if k_x is not None and k_x is not q_x or v_x is not None and v_x is not q_x:
            raise ValueError("ExportAttention implements self-attention only")
        n, h, hd, w = self.seq_len, self.heads, self.head_dim, self.width
        x = q_x.to(self.compute_dtype)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3W)
        qkv = qkv.reshape(-1, n, 3, h, hd).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q * self.scale, k.transpose(-2, -1))  # (B, h, N, N)
        scores = scores.float()
        if attn_mask is not None:
            scores = scores + attn_mask.float()
        probs = torch.softmax(scores, dim=-1).to(self.compute_dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(-1, n, w)
        out = F.linear(out, self.out_weight, self.out_bias)
        return out.to(q_x.dtype), None


class _Fp32LayerNorm(nn.Module):
    """LayerNorm computed in FP32 whatever the input dtype; returns ``out_dtype``."""

    def __init__(self, ln: nn.LayerNorm, out_dtype: torch.dtype):
        super().__init__()
        self.ln = ln.float()
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.float()).to(self.out_dtype)


class _HalfMlp(nn.Module):
    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.mlp = mlp.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.half()).float()


class HalfBlock(nn.Module):
    """An OpenCLIP residual block with FP16 compute and an FP32 residual stream.

    ``x -> x + attn(ln_1(x)) -> x + mlp(ln_2(x))``: LayerNorms in FP32 (output cast to half),
    attention and MLP in half (softmax FP32), their outputs cast back to FP32 before the residual add.
    """

    def __init__(self, block: nn.Module, seq_len: int):
        super().__init__()
        if hasattr(block, "ln_1_kv"):
            raise ValueError("cross-attention blocks are not part of the image tower")
        if not isinstance(block.ls_1, nn.Identity) or not isinstance(block.ls_2, nn.Identity):
            raise ValueError("LayerScale blocks are not supported by the FP16 export")
        self.ln_1 = _Fp32LayerNorm(block.ln_1, torch.float16)
        self.attn = ExportAttention(block.attn, seq_len, compute_dtype=torch.float16)
        self.ln_2 = _Fp32LayerNorm(block.ln_2, torch.float16)
        self.mlp = _HalfMlp(block.mlp)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)[0].float()
        return x + self.mlp(self.ln_2(x))


def visual_copy(model: nn.Module, drop: Sequence[str] = ()) -> nn.Module:
    """A copy of family ``model`` whose CLIP keeps only its ``visual`` tower (the text tower is not in the
    graph: per-class constants are computed before export), without the family's modules named in
    ``drop``. Everything else is deep-copied, so the copy shares no tensor with ``model``."""
    out = copy.copy(model)  # shallow: then rebuild every container that changes
    out._modules = {name: copy.deepcopy(m) for name, m in model._modules.items()
                    if name != "clip" and name not in drop}
    out._parameters = {k: copy.deepcopy(v) for k, v in model._parameters.items()}
    out._buffers = {k: copy.deepcopy(v) for k, v in model._buffers.items()}
    clip = copy.copy(model.clip)
    clip._modules = {"visual": copy.deepcopy(model.clip.visual)}
    clip._parameters, clip._buffers = {}, {}  # text-side tensors are not part of the graph
    out._modules = {"clip": clip, **out._modules}
    return out


def deploy_copy(model: nn.Module, precision: str = "fp32", drop: Sequence[str] = ()) -> nn.Module:
    """A copy of family ``model`` whose image tower exports cleanly (see the module docstring).

    ``visual_copy`` (no text tower, no modules in ``drop``; AA-CLIP drops its text adapters), then every
    visual block gets ``ExportAttention`` (FP32) or becomes a ``HalfBlock`` (FP16).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out = visual_copy(model, drop)
    visual = out.clip.visual
    seq_len = int(visual.grid_size[0]) * int(visual.grid_size[1]) + 1  # patch tokens + class token
    blocks = visual.transformer.resblocks
    for i, block in enumerate(blocks):
        if precision == "fp16":
            blocks[i] = HalfBlock(block, seq_len)
        else:
            block.attn = ExportAttention(block.attn, seq_len)
    return out.eval().requires_grad_(False)
