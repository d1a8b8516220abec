"""``aaclip-calibrate threshold ARTIFACT --reviews reviews.jsonl [--images good/]``: the threshold refitted
from what operators said on the line view (``aaclip.runtime.reviews``).

The reviewed frames' raw scores are recomputed from the graph outputs each review records (``map_max``,
``cls_score``) with the score constants the refit writes, in the runtime's own float32 arithmetic
(``aaclip.contract.score.image_score``): the re-run of the same frames scores exactly these values. With
``--images`` the normalization and the base threshold are first fitted on the good images (as
``aaclip-calibrate threshold --images``); without, the manifest's calibrated constants and threshold are
the base.

False alarms are normals the threshold must stay above; confirmed and missed defects are anomalies it must
stay at or below. The base threshold moves only as far as the reviews ask: just above the highest false
alarm (by ``REVIEW_MARGIN``), or just below the lowest defect, never past the midpoint between them. When a
false alarm scores at or above a confirmed defect no threshold separates them: the refit refuses (a
UserError, exit 2) rather than trade catches for quiet.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.files import sha256_file
from aaclip.contract.manifest import Manifest, check_artifact, load_manifest
from aaclip.contract.score import ScoreParams, image_score
from aaclip.contract.reviews import CONFIRMED, FALSE_ALARM, MISSED, current_verdicts, read_reviews

from .inputs import FrameInput
from .score_calibration import ThresholdOptions, fit_score_block, write_score_block

log = logging.getLogger(__name__)

REVIEW_MARGIN = 0.05
"""How far (raw score units) the threshold moves past the reviewed frame that bounds it. Calibrated raw
scores put good parts at about 0 (median) to 1 (99th percentile): 0.05 is 5% of that spread, so frames of
the same part a little darker or brighter than the reviewed one fall on the same side."""


@dataclass
class Reviewed:
    """The reviewed frames' raw scores by standing verdict, and the reviews that could not be used."""

    scores: dict[str, np.ndarray]
    frames: dict[str, list[str]]  # "camera frame N" per score, for messages
    skipped: list[str] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return int(self.scores[verdict].size)


@dataclass
class RefitResult:
    before: float
    after: float
    reviewed_before: Reviewed       # under the manifest's constants as they were
    reviewed_after: Reviewed        # under the written constants
    good_before: Optional[np.ndarray]
    good_after: Optional[np.ndarray]
    good_description: Optional[str]
    block: dict
    manifest_path: Optional[Path]   # None for a dry run


def reviewed_scores(reviews: list[dict], manifest: Manifest, params: ScoreParams) -> Reviewed:
    """Raw scores of the standing reviews of ``manifest``'s artifact under ``params``; other reviews are
    listed in ``skipped`` with the reason."""
    scores: dict[str, list[float]] = {CONFIRMED: [], FALSE_ALARM: [], MISSED: []}
    frames: dict[str, list[str]] = {CONFIRMED: [], FALSE_ALARM: [], MISSED: []}
    skipped = []
    for r in current_verdicts(reviews).values():
        where = f"{r['camera']} frame {r['frame']} (run {r['run']})"
        if r["artifact_sha256"] != manifest.sha256:
            skipped.append(f"{where}: reviewed on another artifact (sha256 {r['artifact_sha256'][:12]}...); its "
                           "scores mean nothing for this one (aaclip-data reviews turns its frame into a record)")
            continue
        if r["map_max"] is None or r["cls_score"] is None:
            skipped.append(f"{where}: the model's output was not finite on it")
            continue
        value = float(image_score(np.float32(r["map_max"]), np.float32(r["cls_score"]), params))
        scores[r["verdict"]].append(value)
        frames[r["verdict"]].append(where)
    return Reviewed({k: np.asarray(v, np.float64) for k, v in scores.items()}, frames, skipped)


def choose_threshold(base: float, reviewed: Reviewed, margin: float = REVIEW_MARGIN) -> float:
    """The threshold nearest ``base`` above every false alarm and at or below every confirmed/missed defect
    (moved ``margin`` past the bounding frame, at most to the midpoint); a UserError when none exists."""
    false_scores = reviewed.scores[FALSE_ALARM]
    defect_scores = np.concatenate([reviewed.scores[CONFIRMED], reviewed.scores[MISSED]])
    defect_frames = reviewed.frames[CONFIRMED] + reviewed.frames[MISSED]
    lo = float(false_scores.max()) if false_scores.size else -math.inf
    hi = float(defect_scores.min()) if defect_scores.size else math.inf
    if lo >= hi:
        worst = reviewed.frames[FALSE_ALARM][int(np.argmax(false_scores))]
        best = defect_frames[int(np.argmin(defect_scores))]
        raise UserError(
            f"no threshold separates the reviews: false alarm {worst} scores {lo:.6g}, at or above the defect "
            f"{best} ({hi:.6g}); any threshold that silences the one misses the other. Check those two verdicts "
            "(undo a wrong one on the line view), or the model needs more training on such parts")
    t = float(base)
    if t <= lo:
        t = lo + margin if math.isinf(hi) else min(lo + margin, (lo + hi) / 2)
    elif t > hi:
        t = hi - margin if math.isinf(lo) else max(hi - margin, (lo + hi) / 2)
    if not lo < t <= hi:  # float rounding at a tiny gap: the defect's own score separates them
        t = hi
    return t


def refit_threshold(artifact: Path, reviews_path: Path, images: Optional[FrameInput],
                    options: ThresholdOptions = ThresholdOptions()) -> RefitResult:
    """Refit ``artifact``'s threshold from the reviews (and good images); write the manifest unless dry run."""
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    check_artifact(manifest)
    reviews = read_reviews(reviews_path)
    if not reviews:
        raise UserError(f"{reviews_path} holds no reviews; mark alarms on the line view (aaclip-runtime --reviews)")
    old = manifest.score
    if images is not None:
        block, out = fit_score_block(manifest, images, options)
    else:
        if not manifest.calibrated:
            raise UserError(f"{artifact.name} is not calibrated (its constants are the export defaults); add "
                            "--images GOOD_PARTS/ to calibrate on good parts and refit from the reviews in one go")
        block, out = copy.deepcopy(manifest.data["score"]), None
    fitted = ScoreParams.from_block(block)
    before = reviewed_scores(reviews, manifest, old)
    after = reviewed_scores(reviews, manifest, fitted)
    for reason in after.skipped:
        log.warning("review skipped: %s", reason)
    used = sum(after.count(v) for v in (CONFIRMED, FALSE_ALARM, MISSED))
    if used == 0:
        raise UserError(f"none of the {len(reviews)} review line(s) of {reviews_path} can be used for "
                        f"{artifact.name}: {after.skipped[0] if after.skipped else 'every verdict was undone'}")
    threshold = choose_threshold(fitted.threshold, after)
    block["threshold"] = threshold
    calibration = block["calibration"]
    calibration["reviews"] = {
        "file": str(reviews_path), "sha256": sha256_file(reviews_path),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "confirmed": after.count(CONFIRMED), "false_alarm": after.count(FALSE_ALARM), "missed": after.count(MISSED),
        "skipped": len(after.skipped), "base_threshold": fitted.threshold, "margin": REVIEW_MARGIN}
    good_before = good_after = None
    if out is not None:
        good_before = image_score(out.map_max, out.cls_score, old).astype(np.float64)
        good_after = image_score(out.map_max, out.cls_score, fitted).astype(np.float64)
    path = None if options.dry_run else write_score_block(artifact, block)
    log.info("threshold %.6g -> %.6g from %d reviewed frame(s)", old.threshold, threshold, used)
    return RefitResult(old.threshold, threshold, before, after, good_before, good_after,
                       images.description if images is not None else None, block, path)


def _share(n: int, total: int) -> str:
    return f"{n} of {total}"


def summary_lines(r: RefitResult) -> list[str]:
    """What the command prints: the reviews used, and before -> after on them and on the good images."""
    b, a = r.reviewed_before, r.reviewed_after
    n_false, n_conf, n_missed = a.count(FALSE_ALARM), a.count(CONFIRMED), a.count(MISSED)
    lines = [f"reviews: {n_false} false alarm(s), {n_conf} confirmed defect(s), {n_missed} missed defect(s)"
             + (f"; {len(a.skipped)} skipped (see the warnings)" if a.skipped else ""),
             f"raw threshold {r.before:.6g} -> {r.after:.6g} (shown as 0.5 on the page)"]
    if n_false:
        lines.append(f"false alarms on the reviewed frames: {_share(int((b.scores[FALSE_ALARM] >= r.before).sum()), n_false)}"
                     f" -> {_share(int((a.scores[FALSE_ALARM] >= r.after).sum()), n_false)}")
    if n_conf:
        lines.append(f"catch rate on confirmed defects: {_share(int((b.scores[CONFIRMED] >= r.before).sum()), n_conf)}"
                     f" -> {_share(int((a.scores[CONFIRMED] >= r.after).sum()), n_conf)}")
    if n_missed:
        lines.append(f"missed defects caught: {_share(int((b.scores[MISSED] >= r.before).sum()), n_missed)}"
                     f" -> {_share(int((a.scores[MISSED] >= r.after).sum()), n_missed)}")
    if r.good_after is not None:
        n = r.good_after.size
        fb, fa = int((r.good_before >= r.before).sum()), int((r.good_after >= r.after).sum())
        lines.append(f"expected false-alarm rate on the good images ({r.good_description}): {fb / n:.2%} ({fb} of {n})"
                     f" -> {fa / n:.2%} ({fa} of {n})")
    else:
        lines.append("expected false-alarm rate on good images: not measured (add --images GOOD_PARTS/)")
    return lines
