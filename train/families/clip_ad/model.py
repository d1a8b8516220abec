"""CLIP-AD (SPEC-peers.md section 1) on OpenCLIP: SDP (training-free) and SDP+ (linear alignment).

What the official code computes (``CA:`` = ByChelsea/CLIP-AD@f004973):

- Text anchors T (E, 2) per class (``text_anchors``): 9 normal and 10 abnormal states x 22 templates,
  each sentence encoded by the unmodified text tower and L2-normalized; the representative vector of
  each set is the mean of the largest DBSCAN cluster (sklearn, Euclidean, ``dbscan_eps`` /
  ``dbscan_min_samples``), re-normalized (``rvs="mean"``: the plain mean); with ``anchor_precision``
  "float16" (the default) the cluster mean is normalized in float16 as the official code does. When DBSCAN finds only
  noise the official code crashes; here the mean is used and the fallback logged.
- Image side (``dual_path.surgery_streams``): per stage j, the surgery sum s_j with token 0 replaced by
  the original stream's class token, then ``ln_post``, ``proj``, L2-normalization: F_j (B, L+1, E).
- SDP map: p_j = softmax(F_j[cls] T) (no temperature); per token p_a (F_j T_a) - p_n (F_j T_n) (the
  closed form of the feature surgery with two classes); summed over the stages, class token dropped,
  bilinear up-sampling (align_corners False).
- SDP+ map: per tap V_j = L2norm(Linear_j(o_j[patches])); softmax over the 2 channels of the
  up-sampled (align_corners True) 100 V_j T; anomaly channel summed over the taps; added to SDP's.
- Smoothing: scipy ``gaussian_filter`` (sigma, symmetric padding, truncate 4).
- Classification: softmax(100 F_4[cls] T)[anomaly].
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from aaclip.contract.errors import UserError
from torch import nn

from aaclip.train.common.dual_path import surgery_streams
from aaclip.train.families.base import FamilyModel
from aaclip.train.common.peer_ops import scipy_gaussian_blur

log = logging.getLogger(__name__)

NORMAL_STATES = ("flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage", "{} without scratch", "{} without crack", "{} without contamination")
ABNORMAL_STATES = ("damaged {}", "imperfect {}", "blemished {}", "broken {}", "{} with flaw", "{} with defect",
                   "{} with damage", "{} with scratch", "{} with crack", "{} with contamination")
TEMPLATES = ("a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
             "a close-up photo of the {}.", "a bright photo of a {}.", "a bright photo of the {}.",
             "a dark photo of the {}.", "a dark photo of a {}.", "a jpeg corrupted photo of a {}.",
             "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.", "a blurry photo of a {}.",
             "a photo of the {}.", "a photo of a {}.", "a photo of a large {}.", "a photo of the small {}.",
             "a photo of the large {}.", "a photo of a small {}.", "a photo of the {} for visual inspection.",
             "a photo of a {} for visual inspection.", "a photo of the {} for anomaly detection.",
             "a photo of a {} for anomaly detection.")
LOGIT_SCALE = 100.0
OFFICIAL_KEY = "linear_layers"


def prompt_sentences(object_name: str) -> tuple[list[str], list[str]]:
    """(198 normal, 220 abnormal) sentences: every state in every template (``CA:util/prompt_ensemble.py``)."""
    return ([t.format(s.format(object_name)) for s in NORMAL_STATES for t in TEMPLATES],
            [t.format(s.format(object_name)) for s in ABNORMAL_STATES for t in TEMPLATES])


def representative_vector(features: np.ndarray, rvs: str, eps: float, min_samples: int, what: str,
                          precision: str = "float32") -> np.ndarray:
    """One L2-normalized vector for a set of unit sentence features (N, E): DBSCAN's largest cluster mean
    or the plain mean (also when DBSCAN labels every sentence noise; logged).

    ``precision`` "float16" is the official recipe (``CA:util/prompt_ensemble.py``, CPU float32 features):
    DBSCAN on the float32 features, the cluster mean in float32 (numpy), cast to float16 and divided by its
    float16 norm, so the anchor is a unit vector only to float16 precision (norms like 1.00023); the plain
    mean (``rvs="mean"``, and the all-noise fallback) stays float32 there. "float32": the clean variant,
    float64 mean and norm (unit to float32 precision), what checkpoints without the field computed."""
    official = precision == "float16"
    data = np.asarray(features, dtype=np.float32 if official else np.float64)
    chosen, clustered = data, False
    if rvs == "dbscan":
        from sklearn.cluster import DBSCAN

        labels = DBSCAN(eps=eps, min_samples=min_samples).fit(data).labels_
        if (labels >= 0).any():
            chosen, clustered = data[labels == np.argmax(np.bincount(labels[labels >= 0]))], True
        else:
            log.warning("DBSCAN (eps %g, min_samples %d) labels every %s sentence noise: using their mean instead",
                        eps, min_samples, what)
    if official and clustered:
        half = torch.tensor(np.mean(chosen, axis=0), dtype=torch.float16)
        return (half / half.norm()).float().numpy()
    if official:
        mean = torch.from_numpy(chosen).mean(dim=0)
        return (mean / mean.norm()).numpy()
    vector = chosen.mean(axis=0)
    return vector / np.linalg.norm(vector)


def surgery_map(feats: list[torch.Tensor], T: torch.Tensor) -> torch.Tensor:
    """SDP's map on the patch tokens, (B, L): the sum over stages of p_a (F T_a) - p_n (F T_n), where
    p = softmax(F[cls] T) without temperature; the closed form of ``clip_feature_surgery`` with two classes
    (w = p / mean(p), element-wise products minus their mean over the classes, summed)."""
    total = 0.0
    for f in feats:
        sims = torch.matmul(f, T)  # (B, L+1, 2)
        p = torch.softmax(sims[:, 0], dim=-1)  # (B, 2): the class token
        total = total + p[:, 1:2] * sims[:, 1:, 1] - p[:, 0:1] * sims[:, 1:, 0]
    return total


class LinearLayers(nn.Module):
    """SDP+'s trainable layers: one Linear(width -> embed) with bias per tap (``CA:models/model.py``)."""

    def __init__(self, width: int, embed: int, taps: int):
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(width, embed) for _ in range(taps))

    def reset(self, seed: int) -> None:
        """PyTorch's default initialization drawn from ``seed`` (the official script seeds before building)."""
        torch.manual_seed(seed)
        for fc in self.fc:
            fc.reset_parameters()


class ClipAd(FamilyModel):
    """SDP (``clip-ad``) or SDP+ (``clip-ad-plus``: with ``linear_layers``); per-class constants T (C, E, 2)."""

    def __init__(self, clip: nn.Module, tokenizer, config):
        super().__init__(clip, config)
        self.tokenizer = tokenizer
        visual = clip.visual
        depth = len(visual.transformer.resblocks)
        if depth % 4:
            raise UserError(f"CLIP-AD cuts the image tower into 4 stages: {config.backbone.name} has {depth} blocks, "
                            "not a multiple of 4")
        self.grid = int(visual.grid_size[0])
        self._anchors: dict[tuple, torch.Tensor] = {}  # the frozen text tower's anchors, per name and RVS settings
        self.linear = config.method == "clip-ad-plus"
        if self.linear:
            self.linear_layers = LinearLayers(visual.transformer.width, visual.output_dim, 4)

    # ---- text side ------------------------------------------------------------------------------------
    @torch.no_grad()
    def text_anchors(self, object_names: Sequence[str]) -> torch.Tensor:
        """T per object, (C, E, 2): column 0 normal, column 1 abnormal (representative vectors)."""
        c = self.config
        device = self.clip.visual.proj.device
        out = []
        for name in object_names:
            key = (name, c.rvs, c.dbscan_eps, c.dbscan_min_samples, c.anchor_precision)
            if key not in self._anchors:
                cols = []
                for what, sentences in zip(("normal", "abnormal"), prompt_sentences(name)):
                    feats = F.normalize(self.clip.encode_text(self.tokenizer(sentences).to(device)).float(), dim=-1)
                    vec = representative_vector(feats.cpu().numpy(), c.rvs, c.dbscan_eps, c.dbscan_min_samples,
                                                f"{what} '{name}'", c.anchor_precision)
                    cols.append(torch.from_numpy(vec).float())
                self._anchors[key] = torch.stack(cols, dim=-1)
            out.append(self._anchors[key])
        return torch.stack(out).to(device)

    def class_constants(self, object_names: Sequence[str]) -> torch.Tensor:
        return self.text_anchors(object_names)

    # ---- image side -----------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """([F_j (B, L+1, E) per stage: surgery features, L2-normalized], [o_j (B, N, W): original streams])."""
        visual = self.clip.visual
        surgery, original = surgery_streams(visual, images)
        feats = []
        for s, o in zip(surgery, original):
            tokens = torch.cat([o[:, :1], s[:, 1:]], dim=1)  # token 0 <- the original class token
            feats.append(F.normalize(visual.ln_post(tokens) @ visual.proj, dim=-1))
        return feats, original

    def linear_logits(self, original: list[torch.Tensor], T: torch.Tensor) -> list[torch.Tensor]:
        """SDP+: per tap 100 V_j T on the patch grid, (B, 2, G, G)."""
        out = []
        for fc, o in zip(self.linear_layers.fc, original):
            v = F.normalize(fc(o[:, 1:]), dim=-1)
            s = LOGIT_SCALE * torch.matmul(v, T)  # (B, L, 2)
            out.append(s.transpose(1, 2).reshape(-1, 2, self.grid, self.grid))
        return out

    def raw_map(self, feats, original, T: torch.Tensor) -> torch.Tensor:
        """The map before smoothing, (B, S, S)."""
        size = (self.config.image_size, self.config.image_size)
        m = surgery_map(feats, T).reshape(-1, 1, self.grid, self.grid)
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0]
        if self.linear:
            for logits in self.linear_logits(original, T):
                up = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
                m = m + torch.softmax(up, dim=1)[:, 1]
        return m

    def predict(self, images: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, original = self.encode_image(images)
        amap = scipy_gaussian_blur(self.raw_map(feats, original, T), self.config.sigma)
        cls = torch.softmax(LOGIT_SCALE * torch.matmul(feats[-1][:, 0:1], T), dim=-1)[:, 0, 1]
        return amap, cls


# ---- official SDP+ checkpoints -------------------------------------------------------------------------
def find_official_file(src: Path, epoch: Optional[int] = None) -> Path:
    """``src`` itself, or ``epoch_<N>.pth`` in the folder ``src`` (the latest unless ``epoch``)."""
    src = Path(src)
    if src.is_file():
        return src
    found = {int(m.group(1)): p for p in src.glob("epoch_*.pth") for m in [re.match(r"epoch_(\d+)\.pth$", p.name)] if m}
    if not found:
        raise UserError(f"no epoch_<N>.pth in {src}: point at an SDP+ checkpoint file or the training output folder")
    epoch = max(found) if epoch is None else epoch
    if epoch not in found:
        raise UserError(f"no epoch_{epoch}.pth in {src}; available epochs: {sorted(found)}")
    return found[epoch]


def official_state(path: Path) -> dict[str, torch.Tensor]:
    """Our trainable state from an official ``{"linear_layers": {"fc.<i>.weight"/"bias"}}`` file."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {path} safely ({exc.__class__.__name__}): is it an SDP+ checkpoint?") from exc
    if not isinstance(data, dict) or not isinstance(data.get(OFFICIAL_KEY), dict):
        raise UserError(f"{path} has no '{OFFICIAL_KEY}' state dict: expected a checkpoint saved by CLIP-AD's train.py")
    state = data[OFFICIAL_KEY]
    bad = [k for k in state if not re.fullmatch(r"fc\.\d+\.(weight|bias)", k)]
    if bad:
        raise UserError(f"{path}: unexpected key {bad[0]!r} in '{OFFICIAL_KEY}' (expected fc.<i>.weight/bias)")
    return {f"linear_layers.{k}": v.float() for k, v in state.items()}


def import_official(src: Path, out_dir: Path, config, epoch: Optional[int] = None) -> Path:
    """Convert an official SDP+ checkpoint into a ``clip-ad-plus`` checkpoint folder (shapes checked)."""
    from aaclip.train.common.backbone import build_on_backbone
    from aaclip.train.common.checkpoint_files import save_checkpoint

    if config.method != "clip-ad-plus":
        raise UserError(f"official CLIP-AD checkpoints hold SDP+ linear layers: use --method clip-ad-plus, not "
                        f"{config.method}")
    path = find_official_file(src, epoch)
    state = official_state(path)
    model = build_on_backbone(config, ClipAd, base_dir=Path(out_dir))
    expected = model.trainable_state_dict()
    if set(state) != set(expected):
        raise UserError(f"{path}: {len(state) // 2} linear layers, the model has {len(expected) // 2} (one per tap)")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f"{path}: {key} is {tuple(value.shape)}, but backbone {config.backbone.name} needs "
                            f"{tuple(expected[key].shape)} (width -> embed)")
    model.load_trainable_state_dict(state)
    log.info("imported %s", path)
    return save_checkpoint(model, out_dir)


__all__ = ["ClipAd", "LinearLayers", "surgery_map", "prompt_sentences", "representative_vector", "import_official",
           "official_state", "find_official_file"]
