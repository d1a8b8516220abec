"""Replacing an artifact and its manifest as a pair, and never losing a calibration by accident.

Every export stages the artifact, its external data and its manifest in a temporary folder beside the
target (``staging``), complete and validated, then ``commit`` renames them into place: data files first,
the artifact, the manifest last. A failure before the commit (disk full, a crash, a refused calibration)
leaves the previous model untouched, and the staging folder of a killed export carries its pid, so the
next export removes it (``aaclip.contract.files.remove_stale_temps``).

``keep_calibration``: when the target holds a calibrated manifest, the new one keeps its score block only
if the new artifact provably computes the same outputs (same sha256, checkpoint, precision, classes and
input size); otherwise the export refuses to drop the calibration unless ``discard`` is set.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from aaclip.contract.errors import ArtifactError, UserError
from aaclip.contract.files import remove_stale_temps, temp_prefix
from aaclip.contract.manifest import load_manifest, manifest_path, write_manifest

log = logging.getLogger(__name__)


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` (same file system, so the commit is renames only); removed after."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    remove_stale_temps(out.parent)
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=temp_prefix(out)) as tmp:
            yield Path(tmp)
    except OSError as exc:  # a full disk or a vanished folder while staging: the previous model stays
        raise UserError(f"cannot write {out}: {exc.strerror or exc}; the previous {out.name} (if any) is "
                        "unchanged") from None


def _same_outputs(old, new: dict) -> list[str]:
    """Why an existing manifest's calibration does not carry over to ``new`` (empty: it does)."""
    reasons = []
    if old.sha256 != new["artifact"]["sha256"]:
        reasons.append("the artifact's sha256 changed")
    if (old.data.get("source") or {}).get("checkpoint_sha256") != (new.get("source") or {}).get("checkpoint_sha256"):
        reasons.append("another checkpoint")
    if old.precision != new["precision"]:
        reasons.append(f"precision {old.precision} -> {new['precision']}")
    if list(old.classes) != [c["name"] for c in new["classes"]]:
        reasons.append("other classes")
    if (old.height, old.width) != (new["input"]["height"], new["input"]["width"]):
        reasons.append("another input size")
    return reasons


def keep_calibration(out: Path, new: dict, discard: bool) -> dict:
    """``new`` with the calibrated score block of the manifest already at ``out`` when provably valid for it."""
    if not manifest_path(out).exists():
        return new
    try:
        old = load_manifest(out)
    except ArtifactError as exc:
        log.warning("replacing %s, whose manifest is unusable (%s)", out, exc)
        return new
    if not old.calibrated:
        return new
    reasons = _same_outputs(old, new)
    calibration = old.data["score"].get("calibration") or {}
    if not reasons:
        log.info("kept the calibration of %s (identical artifact)", out.name)
        return dict(new, score=old.data["score"])
    what = (f"{out} is calibrated (threshold {old.score.threshold:.6g}, {calibration.get('frames', '?')} frames, "
            f"{calibration.get('date', 'undated')}) and the new export differs ({', '.join(reasons)})")
    if discard:
        log.warning("%s: its calibration is discarded (--discard-calibration); recalibrate before running it", what)
        return new
    raise UserError(f"{what}, so its calibration would be lost: pass --discard-calibration to replace it anyway "
                    "(then run aaclip-calibrate threshold again), or write to another --out")


def commit(staged_dir: Path, out: Path, data_files: Sequence[str], manifest: dict) -> Path:
    """Validate and stage ``manifest``, then rename data files, the artifact and the manifest into place.
    Stale data files of an earlier export that the new artifact no longer uses are removed. Returns the
    manifest's path."""
    out = Path(out)
    staged = Path(staged_dir) / out.name
    write_manifest(staged, manifest)  # validated, complete, still beside the staged artifact
    for name in data_files:
        os.chmod(Path(staged_dir) / name, 0o644)
        os.replace(Path(staged_dir) / name, out.parent / name)
    os.replace(staged, out)
    os.replace(manifest_path(staged), manifest_path(out))
    for name in (out.name + ".data",):
        if name not in data_files and (out.parent / name).exists():
            (out.parent / name).unlink()  # tensors of an earlier external-data export
    return manifest_path(out)
