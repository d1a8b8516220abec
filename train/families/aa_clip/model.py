"""AA-CLIP on OpenCLIP's own modules: residual adapters in both towers, anchors, patch/detection heads.

The CLIP model is frozen and reused as is (its blocks, ln_post, ln_final, tokenizer); this module adds
only the trainable adapters and projections of SPEC sections 2-4 and runs the towers block by block so
the adapters can be blended in after the first K blocks.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aaclip.train.common import maps
from aaclip.train.families.aa_clip.adapters import Projection, ResidualAdapter, blend
from aaclip.train.common.backbone import vision_geometry
from aaclip.train.families.aa_clip.config import AAClipConfig
from aaclip.train.families.base import FamilyModel
from aaclip.train.common.prompts import prompt_sentences


def _run_blocks(transformer, x: torch.Tensor, attn_mask, hook) -> torch.Tensor:
    """Run a batch-first (B, L, D) tensor through OpenCLIP blocks, calling ``hook(i, x) -> x`` after each."""
    seq_first = not getattr(transformer, "batch_first", True)
    if seq_first:
        x = x.transpose(0, 1)
    for i, block in enumerate(transformer.resblocks):
        x = block(x, attn_mask=attn_mask)
        if seq_first:
            x = hook(i, x.transpose(0, 1)).transpose(0, 1)
        else:
            x = hook(i, x)
    return x.transpose(0, 1) if seq_first else x


class AAClip(FamilyModel):
    """Frozen CLIP + trainable text adapters/projection and image adapters/projections.

    Its per-class constants are the text anchors T (C, E, 2) of the adapted text tower.
    """

    def __init__(self, clip: nn.Module, tokenizer, config: AAClipConfig):
        super().__init__(clip, config)
        self.tokenizer = tokenizer
        depth, self.patch_size, self.grid = vision_geometry(clip)
        self.levels = config.resolved_levels(depth)
        self.lam = config.adapter_lambda
        width_v = clip.visual.transformer.width
        width_t = clip.transformer.width
        embed = clip.visual.output_dim
        k_t, k_i = config.resolved_depths(len(clip.transformer.resblocks), depth)
        self.text_adapters = nn.ModuleList(ResidualAdapter(width_t) for _ in range(k_t))
        self.text_proj = Projection(width_t, embed, relu=True)
        self.image_adapters = nn.ModuleList(ResidualAdapter(width_v) for _ in range(k_i))
        self.seg_proj = nn.ModuleList(Projection(width_v, embed, config.relu) for _ in self.levels)
        self.det_proj = Projection(width_v, embed, config.relu)

    # ---- parameters (the trainable state dict is FamilyModel's: adapters and projections) -------------
    def text_parameters(self):
        return list(self.text_adapters.parameters()) + list(self.text_proj.parameters())

    def image_parameters(self):
        return (
            list(self.image_adapters.parameters())
            + list(self.seg_proj.parameters())
            + list(self.det_proj.parameters())
        )

    # ---- text side (SPEC section 3) ----------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Adapted text features (N, E) of tokenized sentences (N, context)."""
        clip = self.clip
        x = clip.token_embedding(tokens) + clip.positional_embedding

        def hook(i: int, h: torch.Tensor) -> torch.Tensor:
            return blend(self.text_adapters[i], h, self.lam) if i < len(self.text_adapters) else h

        x = _run_blocks(clip.transformer, x, clip.attn_mask, hook)
        x = clip.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return self.text_proj(eot)

    def text_anchors(self, object_names: Sequence[str]) -> torch.Tensor:
        """Anchors T per object, (C, E, 2): mean of L2-normalized sentence features, re-normalized.

        Every sentence of every object goes through the text tower in one batch (one forward and, in
        stage 1, one backward pass instead of two per object)."""
        device = next(self.text_proj.parameters()).device
        groups = [sentences for name in object_names for sentences in prompt_sentences(name)]
        tokens = self.tokenizer([s for group in groups for s in group]).to(device)
        feats = F.normalize(self.encode_text(tokens), dim=-1)
        cols, start = [], 0
        for group in groups:
            cols.append(F.normalize(feats[start:start + len(group)].mean(dim=0), dim=-1))
            start += len(group)
        return torch.stack(cols).view(len(object_names), 2, -1).transpose(1, 2)

    def class_constants(self, object_names: Sequence[str]) -> torch.Tensor:
        return self.text_anchors(object_names)

    # ---- image side (SPEC section 4) ---------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Normalized images (B, 3, H, W) -> ([V_i (B, L, E) per level], d (B, E))."""
        visual = self.clip.visual
        x = visual._embeds(images)
        taps: list[torch.Tensor] = []
        levels = set(self.levels)

        def hook(i: int, h: torch.Tensor) -> torch.Tensor:
            if i < len(self.image_adapters):
                h = blend(self.image_adapters[i], h, self.lam)
            if i + 1 in levels:
                taps.append(h[:, 1:])
            return h

        _run_blocks(visual.transformer, x, None, hook)
        tokens = [visual.ln_post(t) for t in taps]
        V = [F.normalize(proj(t), dim=-1) for proj, t in zip(self.seg_proj, tokens)]
        d = F.normalize(self.det_proj(tokens[-1]), dim=-1).mean(dim=1)
        return V, d

    def predict(self, images: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference (SPEC section 5): raw anomaly map (B, H, W) and classification score (B,)."""
        V, d = self.encode_image(images)
        size = (self.config.image_size, self.config.image_size)  # static in an exported graph
        return maps.anomaly_map(V, T, self.grid, size, self.config.domain), maps.cls_score(d, T)
