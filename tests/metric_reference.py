"""Expected evaluation figures, computed apart from aaclip-eval's own wiring: the model's raw outputs on the
test images, labels taken from the records file, the paper's test-set min-max image score written out here,
and scikit-learn's metrics. An evaluation that scores the wrong thing (the cls score alone, another class's
ranges, shuffled labels) reports other numbers than these."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return float(f1.max())


def minmax(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (x - lo) / (hi - lo)


def reference_metrics(ckpt: Path, records_file: Path, map_weight: float,
                      root: Optional[Path] = None) -> dict[str, dict[str, Optional[float]]]:
    """Per class: image AUROC/AP/F1-max of ``map_weight * minmax(map max) + (1 - map_weight) * minmax(cls)``
    (the ranges over that class's test set) and, where anomalies have masks, pixel AUROC/AP."""
    from aaclip.train.checkpoint import load_checkpoint
    from aaclip.train.evaluate import predict_records
    from aaclip.data.records import read_records

    records = read_records(records_file)
    label_of = {r.image_path: r.label for r in records}
    preds = predict_records(load_checkpoint(ckpt), records, root or records_file.parent)
    out = {}
    for cls, p in preds.items():
        maps, cls_scores = p["maps"].astype(np.float64), p["cls"].astype(np.float64)
        labels = np.array([label_of[path] for path in p["paths"]])  # from the records file, not the loader
        top = maps.reshape(len(maps), -1).max(axis=1)
        scores = (map_weight * minmax(top, maps.min(), maps.max())
                  + (1 - map_weight) * minmax(cls_scores, cls_scores.min(), cls_scores.max()))
        entry: dict[str, Optional[float]] = {
            "image_auroc": float(roc_auc_score(labels, scores)),
            "image_ap": float(average_precision_score(labels, scores)),
            "image_f1_max": f1_max(labels, scores),
            "n_images": len(labels), "n_anomalous": int(labels.sum())}
        known = np.asarray(p["known"], bool)
        if (known & (labels == 1)).any():
            masks, kmaps = p["masks"][known].ravel(), maps[known].ravel()
            entry["pixel_auroc"] = float(roc_auc_score(masks, kmaps))
            entry["pixel_ap"] = float(average_precision_score(masks, kmaps))
        else:
            entry["pixel_auroc"] = entry["pixel_ap"] = None
        out[cls] = entry
    return out


def assert_report_matches(report: dict, expected: dict, tol: float = 1e-6) -> None:
    """Every figure of ``expected`` equals the report's (``None`` stays ``None``)."""
    import pytest

    for cls, want in expected.items():
        for key, value in want.items():
            got = report[cls][key]
            assert (got is None) == (value is None), (cls, key, got, value)
            if value is not None:
                assert got == pytest.approx(value, abs=tol), (cls, key, got, value)
