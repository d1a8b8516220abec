"""Run frames through a runner exactly as the runtime loop feeds them: through the contract's ``FeedBuilder``.

Same resize (``fit_frame`` into the runner's lent uint8 NHWC batch), same class-id input, same padding to
the engine profile's minimum batch (the last frame repeated, its results ignored), same batch size. Keeps
only what calibration needs: ``map_max`` and ``cls_score`` per frame, optionally a fixed random subsample
of anomaly-map pixels per frame and (small sets only) the maps themselves.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.feeds import FeedBuilder
from aaclip.contract.manifest import Manifest
from aaclip.contract.tensors import CLS_OUTPUT, MAP_OUTPUT, MAX_OUTPUT, SCORE_OUTPUTS
from aaclip.runtime.backends.base import Runner

from .inputs import Item

log = logging.getLogger(__name__)



@dataclass
class FrameOutputs:
    """Per-frame raw outputs, in input order."""

    map_max: np.ndarray
    cls_score: np.ndarray
    class_ids: np.ndarray
    pixels: Optional[np.ndarray] = None          # subsampled anomaly-map values (all frames together)
    maps: Optional[np.ndarray] = None            # (N, Hm, Wm) when kept
    frames: list = field(default_factory=list)   # fitted input frames when kept

    def __len__(self) -> int:
        return int(self.map_max.size)


@dataclass(frozen=True)
class Collect:
    """What ``run_items`` keeps besides ``map_max``/``cls_score``: ``pixel_samples`` > 0 anomaly-map values per
    frame (uniform random pixels, fixed ``seed``), whole maps (``keep_maps``), the fitted inputs
    (``keep_frames``); ``on_item`` sees each item as it is consumed (e.g. to hash the calibration set)."""

    batch: int = 1
    pixel_samples: int = 0
    keep_maps: bool = False
    keep_frames: bool = False
    seed: int = 0
    on_item: Optional[Callable[[Item], None]] = None


def run_items(runner: Runner, manifest: Manifest, items: Iterable[Item], collect: Collect = Collect()) -> FrameOutputs:
    """Infer every item with ``runner`` (activated by the caller) in batches of ``collect.batch``."""
    batch, pixel_samples, keep_maps = collect.batch, collect.pixel_samples, collect.keep_maps
    keep_frames, seed, on_item = collect.keep_frames, collect.seed, collect.on_item
    builder = FeedBuilder(manifest, batch, allocate=runner.lend_input)
    need_maps = pixel_samples > 0 or keep_maps
    wanted = SCORE_OUTPUTS + ((MAP_OUTPUT,) if need_maps else ())
    rng = np.random.default_rng(seed)
    map_max: list[np.ndarray] = []
    cls_score: list[np.ndarray] = []
    ids: list[int] = []
    pixels: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    pending = 0

    def flush(n: int) -> None:
        out = runner.infer(builder.feeds(n), wanted)
        map_max.append(np.array(out[MAX_OUTPUT][:n], np.float32))
        cls_score.append(np.array(out[CLS_OUTPUT][:n], np.float32))
        if need_maps:
            amap = np.asarray(out[MAP_OUTPUT][:n], np.float32)
            if pixel_samples > 0:
                flat = amap.reshape(n, -1)
                k = min(pixel_samples, flat.shape[1])
                for row in flat:
                    pixels.append(row[rng.choice(row.size, k, replace=False)] if k < row.size else row.copy())
            if keep_maps:
                maps.append(amap.copy())
        if keep_frames:
            frames.extend(builder.slot(i).copy() for i in range(n))

    for item in items:
        if on_item is not None:
            on_item(item)
        builder.put(pending, item.frame, item.class_id)
        ids.append(int(item.class_id))
        pending += 1
        if pending == batch:
            flush(pending)
            pending = 0
    if pending:
        flush(pending)
    if not ids:
        raise UserError("no frame could be read from the calibration input; check the images/camera")
    return FrameOutputs(
        map_max=np.concatenate(map_max), cls_score=np.concatenate(cls_score), class_ids=np.asarray(ids, np.int64),
        pixels=np.concatenate(pixels) if pixels else None,
        maps=np.concatenate(maps) if maps else None, frames=frames)
