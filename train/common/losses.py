"""Losses of SPEC section 6: focal + two dice terms per level, disentangle term, stage-2 cross-entropy; and,
for anomalies labelled per image only (no mask), the map-maximum loss (``map_max_loss``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_GAMMA = 2.0
FOCAL_SMOOTH = 1e-5
DISENTANGLE_WEIGHT = 0.1


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA, smooth: float = FOCAL_SMOOTH) -> torch.Tensor:
    """Focal loss on probabilities (B, C, H, W) against an integer mask (B, H, W); class weights 1."""
    num_classes = probs.shape[1]
    p = probs.permute(0, 2, 3, 1).reshape(-1, num_classes)
    t = target.reshape(-1, 1).long()
    one_hot = torch.zeros_like(p).scatter_(1, t, 1.0)
    one_hot = one_hot.clamp(smooth / (num_classes - 1), 1.0 - smooth)
    pt = (one_hot * p).sum(dim=1) + smooth
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - (2 sum(p g) + 1) / (sum p + sum g + 1) per image, averaged over the batch; (B, H, W) inputs."""
    p = prob.reshape(prob.shape[0], -1)
    g = target.reshape(target.shape[0], -1).to(p.dtype)
    return (1.0 - (2.0 * (p * g).sum(1) + 1.0) / (p.sum(1) + g.sum(1) + 1.0)).mean()


def segmentation_loss(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """focal(P, mask) + dice(P[:,0], 1 - mask) + dice(P[:,1], mask) for one level; mask is 0/1 (B, H, W)."""
    return focal_loss(probs, mask) + dice_loss(probs[:, 0], 1.0 - mask) + dice_loss(probs[:, 1], mask)


def disentangle_loss(anchors: torch.Tensor) -> torch.Tensor:
    """(mean over the batch of T_N . T_A)^2 for per-image anchors (B, E, 2)."""
    return (anchors[:, :, 0] * anchors[:, :, 1]).sum(dim=1).mean() ** 2


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """2-way cross-entropy on s = d T (the reference's choice; the paper's text says BCE)."""
    return F.cross_entropy(logits, labels.long())


def map_max_loss(similarities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multiple-instance loss of images labelled per image only: binary cross-entropy of the most anomalous
    patch's probability against the image label, on S = 100 V T (B, L, 2).

    The training map's abnormal probability is softmax(S)[..., 1] = sigmoid(S1 - S0), up-sampled
    bilinearly; a bilinear up-sampling (align_corners) never exceeds its grid's maximum, so the map's
    maximum is the grid's. An anomalous image needs one abnormal patch, wherever it is.
    """
    margin = (similarities[..., 1] - similarities[..., 0]).amax(dim=1)
    return F.binary_cross_entropy_with_logits(margin, labels.to(margin.dtype))
