"""The deployable graph: uint8 BGR NHWC frames -> anomaly map, map maximum, classification score.

``DeployGraph`` wraps a loaded ``AAClip`` so that everything the graph contract puts inside the graph
happens here: uint8 -> float, BGR -> RGB, NHWC -> NCHW, the optional resize from the camera resolution
(PIL-compatible bicubic as two MatMuls, see ``resize.py``), CLIP mean/std, the image tower
(``AAClip.encode_image``, unchanged) and the post-processing of ``aaclip.train.maps`` (the one source of
truth for SPEC section 5). Text anchors are computed once at export time and held as a constant.

Two changes make the graph export cleanly, both numerically neutral in FP32:
- ``nn.MultiheadAttention`` is replaced by ``ExportAttention`` (same weights, plain MatMul/Softmax with
  the batch as ``-1`` in every reshape), so the traced graph has no fused attention op and is correct for
  any batch size, whatever batch it was traced with.
- FP16 (``precision="fp16"``): each transformer block runs its Linear/attention/MLP in half precision
  while LayerNorm, softmax and the residual stream stay FP32 (``HalfBlock``); adapters, ln_post,
  projections, L2-normalizations, anchor similarities, blur and up-sampling stay FP32. Every boundary
  is an explicit Cast, which is what TensorRT's strongly typed mode expects.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from aaclip.train import maps
from aaclip.train.constants import CLIP_MEAN, CLIP_STD
from aaclip.train.model import AAClip
from torch import nn

from .resize import pil_bicubic_weights, resize_float

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


def export_copy(model: AAClip, precision: str = "fp32") -> AAClip:
    """A copy of ``model`` whose image tower exports cleanly; the text tower is dropped (not in the graph)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    text_free = copy.copy(model)  # shallow: share the module dict, then rebuild what changes
    text_free._modules = dict(model._modules)
    clip = copy.copy(model.clip)
    clip._modules = {"visual": copy.deepcopy(model.clip.visual)}
    clip._parameters, clip._buffers = {}, {}  # text-side tensors are not part of the graph
    text_free._modules["clip"] = clip
    for name in ("text_adapters", "text_proj"):
        text_free._modules.pop(name, None)
    visual = clip.visual
    seq_len = model.grid * model.grid + 1
    blocks = visual.transformer.resblocks
    for i, block in enumerate(blocks):
        if precision == "fp16":
            blocks[i] = HalfBlock(block, seq_len)
        else:
            block.attn = ExportAttention(block.attn, seq_len)
    for name in ("image_adapters", "seg_proj", "det_proj"):
        text_free._modules[name] = copy.deepcopy(model._modules[name])
    return text_free.eval().requires_grad_(False)


class DeployGraph(nn.Module):
    """uint8 (B, H, W, 3) BGR frames [+ int64 class ids (B,)] -> (anomaly_map, map_max, cls_score).

    ``anchors`` (C, E, 2) are the text anchors of the artifact's classes, in the order of the manifest.
    With one class the graph has no ``class_id`` input; with several, ``class_id`` selects each image's
    anchors (Gather, then a batched MatMul). ``input_hw`` is the camera resolution baked into the graph
    (None: the model resolution, no resize).
    """

    def __init__(self, model: AAClip, anchors: torch.Tensor, input_hw: Optional[Sequence[int]] = None,
                 precision: str = "fp32"):
        super().__init__()
        if anchors.dim() != 3 or anchors.shape[-1] != 2:
            raise ValueError(f"anchors must be (C, E, 2), got {tuple(anchors.shape)}")
        self.model = export_copy(model, precision)
        self.precision = precision
        self.size = int(model.config.image_size)
        self.grid = model.grid
        self.domain = model.config.domain
        self.num_classes = int(anchors.shape[0])
        self.register_buffer("anchors", anchors.detach().float().clone())
        self.input_hw = (self.size, self.size) if input_hw is None else (int(input_hw[0]), int(input_hw[1]))
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
        # x/255 then (x - mean)/std folded into one multiply-add per channel (RGB order).
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std))
        self.register_buffer("pixel_shift", -mean / std)
        self.register_buffer("bgr_to_rgb", torch.tensor([2, 1, 0], dtype=torch.int64))
        self.resize = self.input_hw != (self.size, self.size)
        if self.resize:
            wh = pil_bicubic_weights(self.input_hw[0], self.size)
            ww = pil_bicubic_weights(self.input_hw[1], self.size)
            self.register_buffer("resize_h", torch.from_numpy(wh.astype(np.float32)))  # (S, Hin)
            self.register_buffer("resize_wt", torch.from_numpy(ww.T.astype(np.float32).copy()))  # (Win, S)

    @property
    def has_class_input(self) -> bool:
        return self.num_classes > 1

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC BGR -> normalized float32 NCHW RGB at the model resolution."""
        x = image.to(torch.float32).permute(0, 3, 1, 2)  # (B, 3, H, W), BGR
        x = torch.index_select(x, 1, self.bgr_to_rgb)  # RGB (a Gather on the channel axis)
        if self.resize:
            # PIL's order: horizontal pass, 8-bit range (clip), vertical pass (see resize.py)
            x = torch.matmul(self.resize_h, torch.clamp(torch.matmul(x, self.resize_wt), 0.0, 255.0))
        return x * self.pixel_scale + self.pixel_shift

    def select_anchors(self, class_id: Optional[torch.Tensor]) -> torch.Tensor:
        if self.num_classes == 1:
            return self.anchors[0]  # (E, 2)
        if class_id is None:
            raise ValueError("this graph holds several classes: pass class_id (B,) int64")
        return torch.index_select(self.anchors, 0, class_id)  # (B, E, 2)

    def forward(self, image: torch.Tensor, class_id: Optional[torch.Tensor] = None):
        x = self.preprocess(image)
        T = self.select_anchors(class_id)
        V, d = self.model.encode_image(x)
        amap = maps.anomaly_map(V, T, self.grid, (self.size, self.size), self.domain)
        amap = amap.reshape(-1, self.size, self.size)  # static spatial dims in the graph's output type
        map_max = torch.amax(amap.flatten(1), dim=1)
        return amap, map_max, maps.cls_score(d, T)


def reference_preprocess(frames_bgr: np.ndarray, input_hw: Sequence[int], size: int) -> torch.Tensor:
    """The training pre-processing applied to graph inputs, in float64 then float32 (for parity checks).

    Frames (B, H, W, 3) uint8 BGR at ``input_hw``; resized like the graph (``resize.resize_float``) when
    ``input_hw`` differs from the model size, then /255 and CLIP mean/std.
    """
    x = frames_bgr[..., ::-1].astype(np.float64)  # RGB
    if tuple(input_hw) != (size, size):
        x = np.stack([resize_float(f, size, size) for f in x])
    x = (x / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32))
