"""The toy model: one trainable linear layer on the patch tokens of a frozen CLIP block, plus the tokens'
similarity to the class's text embedding."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from aaclip.train.families.base import FamilyModel
from toy_family.config import ToyConfig


class ToyModel(FamilyModel):
    def __init__(self, clip, tokenizer, config: ToyConfig):
        super().__init__(clip, config)
        self.tokenizer = tokenizer
        visual = clip.visual
        self.tap = config.tap or len(visual.transformer.resblocks)
        self.grid = int(visual.grid_size[0])
        self.head = nn.Linear(visual.transformer.width, 1)

    def class_constants(self, object_names):
        tokens = self.tokenizer([f"a photo of a {name}." for name in object_names])
        return F.normalize(self.clip.encode_text(tokens), dim=-1)  # (C, E)

    def patch_logits(self, images, constants):
        visual = self.clip.visual
        x = visual._embeds(images)
        for block in visual.transformer.resblocks[: self.tap]:
            x = block(x)
        tokens = visual.ln_post(x[:, 1:])  # (B, L, W)
        feats = F.normalize(tokens @ visual.proj, dim=-1)  # (B, L, E)
        similarity = (feats * constants.unsqueeze(-2)).sum(-1)  # one class (E,) or one per image (B, E)
        return self.head(tokens)[..., 0] + similarity  # (B, L)

    def predict(self, images, constants):
        logits = self.patch_logits(images, constants)
        grid = logits.reshape(-1, 1, self.grid, self.grid)
        amap = F.interpolate(grid, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False)
        return amap[:, 0], logits.mean(dim=1)
