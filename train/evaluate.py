"""Evaluation of SPEC section 7: per-class pixel/image metrics and their mean.

Score normalization follows the paper (SPEC section 5): for each class, anomaly maps and
classification scores are min-max normalized over that class's whole test set, and the image score
is 0.5 * max(normalized map) + 0.5 * normalized cls score (industrial) or max(normalized map)
(medical). Normalizing the whole maps and then taking each image's maximum equals normalizing the
per-image maxima by the maps' global (min, max), which is what is computed here: the contract's score
arithmetic (``aaclip.contract.score``) with the test set's ranges. Deployed engines cannot see a test
set: they use the fixed constants of calibration instead (docs/calibration.md).

Pixel metrics need ground truth for every pixel they count: they use the images whose pixels are known
(normal images and anomalies with masks) and are "not computed" (None, with the reason in
``pixel_metrics``) for a class none of whose anomalies has a mask; never against invented masks.
Image metrics use every image.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from aaclip.contract import metrics
from aaclip.contract.score import ScoreParams, image_score

from aaclip.train.common.constants import MAP_WEIGHT
from aaclip.train.common.dataset import AnomalyDataset
from aaclip.train.families import get_family
from aaclip.train.common.progress import Progress
from aaclip.data.records import Record

log = logging.getLogger(__name__)


def usable_records(records: Sequence[Record], root: Path) -> list[Record]:
    """The records whose image (and mask) files are good images; the others are skipped, counted and reported
    in one warning, so one bad file never aborts an evaluation."""
    from aaclip.contract.errors import UserError
    from aaclip.contract.images import ImageError, SkippedImages, read_image

    from aaclip.data.records import resolve

    skipped = SkippedImages(f"evaluation data ({root})")
    kept = []
    for r in records:
        try:
            for rel in (r.image_path, r.mask_path):
                if rel is not None:
                    read_image(resolve(root, rel))
        except ImageError as exc:
            skipped.skip(exc)
            continue
        kept.append(r)
    skipped.report()
    if not kept:
        raise UserError(f"no usable image among the {len(records)} records ({len(skipped)} skipped)")
    return kept


@torch.no_grad()
def predict_records(model, records: Sequence[Record], root: Path, batch_size: int = 8,
                    device: str | torch.device = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """Raw maps, cls scores, masks and labels per class:
    {class: {"maps", "cls", "masks", "known", "labels", "paths"}} (``known``: the image's pixels are labelled).

    Any family model (``aaclip.train.families.base``): per-class constants once, then ``predict``.
    """
    records = usable_records(records, root)
    model.eval().to(device)
    classes = sorted({r.class_name for r in records})
    family = get_family(model.config.method)
    names = [model.config.classes.get(c) or family.object_name(c) for c in classes]
    constants = model.class_constants(names).to(device)
    ds = AnomalyDataset(records, root, model.config.image_size, classes)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for batch in Progress(loader, len(loader), "evaluate", log, unit="batch"):
        idx = batch["class_index"].to(device)
        amap, cls = model.predict(batch["image"].to(device), constants[idx])
        for i, c in enumerate(idx.tolist()):
            entry = out[classes[c]]
            entry["maps"].append(amap[i].float().cpu().numpy())
            entry["cls"].append(float(cls[i]))
            entry["masks"].append(batch["mask"][i].numpy().astype(bool))
            entry["known"].append(bool(batch["pixels_known"][i]))
            entry["labels"].append(int(batch["label"][i]))
            entry["paths"].append(batch["path"][i])
    return {c: {k: (np.asarray(v) if k != "paths" else list(v)) for k, v in e.items()} for c, e in out.items()}


def paper_score_params(maps: np.ndarray, cls: np.ndarray, map_weight: float) -> ScoreParams:
    """Score parameters of the paper's evaluation: one class's test-set (min, max) of maps and cls scores."""
    unit = ScoreParams(0.0, 1.0, 0.0, 1.0, map_weight)
    return unit.with_ranges((float(maps.min()), float(maps.max())), (float(cls.min()), float(cls.max())))


NOT_COMPUTED = "not computed: no anomalous image of this class has a mask (image-level labels only)"


def class_metrics(pred: dict[str, np.ndarray], domain: str,
                  map_weight: Optional[float] = None) -> dict[str, Optional[float]]:
    """Pixel and image metrics of one class (pixel metrics only over images whose pixels are known); the image
    score weighs the normalized map maximum by ``map_weight`` (None: the domain's AA-CLIP weight; a family's
    own weight is its ``default_score``'s)."""
    maps = pred["maps"]
    known = np.asarray(pred.get("known", np.ones(len(maps), bool)), bool)  # which images' pixels are known
    labels = np.asarray(pred["labels"])
    result: dict = {}
    if (known & (labels == 1)).any():
        result.update(metrics.pixel_metrics(pred["masks"][known], maps[known]))
        result["pixel_images"] = int(known.sum())
        if not known.all():
            result["pixel_metrics"] = (f"on the {int(known.sum())} images with known pixels; "
                                       f"{int((~known).sum())} anomalies without masks left out")
    else:
        result.update({key: None for key in metrics.PIXEL_KEYS})
        result["pixel_images"] = 0
        result["pixel_metrics"] = NOT_COMPUTED
    params = paper_score_params(maps, pred["cls"], MAP_WEIGHT[domain] if map_weight is None else map_weight)
    scores = image_score(maps.reshape(len(maps), -1).max(axis=1), pred["cls"], params)
    result.update(metrics.image_metrics(pred["labels"], scores))
    result["n_images"] = int(len(maps))
    result["n_anomalous"] = int(np.sum(pred["labels"]))
    return result


def evaluate(model, records: Sequence[Record], root: Path, batch_size: int = 8,
             device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(report with per-class metrics and their mean, raw predictions per class)."""
    preds = predict_records(model, records, root, batch_size, device)
    map_weight = get_family(model.config.method).default_score(model).map_weight  # Res2CLIP: 0 (score is per frame)
    per_class = {c: class_metrics(p, model.config.domain, map_weight) for c, p in sorted(preds.items())}
    return metrics.class_report(per_class), preds


def overlay_name(rel: str) -> Path:
    """The overlay's path below its class folder: the image's path with ``.png`` (``test/crack/000.png`` ->
    ``test/crack/000.png``), so MVTec's many ``000.png`` never overwrite each other; an absolute or ``..``
    path keeps its parts below the anchor (``/data/a/000.jpg`` -> ``data/a/000.png``)."""
    parts = [p for p in Path(rel).parts if p not in ("..", ".") and p != Path(rel).anchor]
    return Path(*parts).with_suffix(".png")


def save_overlays(preds: dict[str, dict], root: Path, out_dir: Path, image_size: int) -> int:
    """Heat-map overlays (frame | overlay) per test image, maps min-max normalized per class, at
    ``out_dir/<class>/<the image's relative path>.png``."""
    import cv2
    from aaclip.contract.files import atomic_path
    from aaclip.runtime.overlay import evidence_image, heat_overlay

    from aaclip.train.common.preprocess import load_rgb
    from aaclip.data.records import resolve

    n = 0
    for cls, pred in preds.items():
        params = paper_score_params(pred["maps"], pred["cls"], 1.0)
        for amap, rel in zip(pred["maps"], pred["paths"]):
            bgr = cv2.cvtColor(load_rgb(resolve(root, rel), image_size), cv2.COLOR_RGB2BGR)
            image = evidence_image(bgr, heat_overlay(bgr, amap, params))
            target = Path(out_dir) / cls / overlay_name(rel)
            with atomic_path(target, suffix=".png") as tmp:
                if not cv2.imwrite(str(tmp), image):
                    raise OSError(f"could not write {target}")
            n += 1
    return n
