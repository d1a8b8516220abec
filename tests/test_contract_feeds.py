"""The feed builder: frames written once into (lent) input buffers, fitted, padded and class-tagged."""
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import pytest
from aaclip.contract.errors import UserError
from aaclip.contract.feeds import FeedBuilder, fit_frame


@dataclass
class Spec:
    height: int = 8
    width: int = 12
    batch_min: int = 1
    batch_max: Optional[int] = None
    class_input: Optional[str] = None
    classes: tuple = ("a",)


def frame(h, w, value=0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 255, (h, w, 3)) if value is None else np.full((h, w, 3), value)).astype(np.uint8)


def test_put_fits_frames_with_the_runtime_resize():
    b = FeedBuilder(Spec(), batch=2)
    big, small = frame(40, 60, None, 1), frame(4, 6, None, 2)
    b.put(0, big)
    b.put(1, small)
    feeds = b.feeds(2)
    assert set(feeds) == {"image"} and feeds["image"].shape == (2, 8, 12, 3) and feeds["image"].dtype == np.uint8
    assert np.array_equal(feeds["image"][0], cv2.resize(big, (12, 8), interpolation=cv2.INTER_AREA))
    assert np.array_equal(feeds["image"][1], cv2.resize(small, (12, 8), interpolation=cv2.INTER_CUBIC))
    grey = np.full((8, 12), 77, np.uint8)
    bgra = np.dstack([frame(8, 12, 9), np.full((8, 12), 255, np.uint8)])
    assert np.all(fit_frame(grey, 8, 12) == 77) and np.all(fit_frame(bgra, 8, 12) == 9)


def test_frames_are_written_into_the_lent_buffer_once():
    lent = {}

    def allocate(name, shape, dtype):
        lent[name] = np.zeros(shape, dtype)
        return lent[name]

    b = FeedBuilder(Spec(class_input="class_id", classes=("a", "b")), batch=3, allocate=allocate)
    b.put(0, frame(8, 12, 5), class_id=1)
    feeds = b.feeds(1)
    assert np.shares_memory(feeds["image"], lent["image"]) and np.shares_memory(feeds["class_id"], lent["class_id"])
    assert lent["image"][0].max() == 5 and lent["class_id"][0] == 1 and feeds["class_id"].dtype == np.int64


def test_padding_to_the_engine_profile_minimum_repeats_the_last_frame():
    b = FeedBuilder(Spec(batch_min=4, batch_max=8, class_input="class_id", classes=("a", "b")), batch=2)
    b.put(0, frame(8, 12, 10), 0)
    b.put(1, frame(8, 12, 20), 1)
    feeds = b.feeds(2)
    assert feeds["image"].shape[0] == 4
    assert [int(x.max()) for x in feeds["image"]] == [10, 20, 20, 20]
    assert feeds["class_id"].tolist() == [0, 1, 1, 1]


def test_bad_batches_classes_and_frames_are_user_errors():
    with pytest.raises(UserError, match="--batch 9 exceeds the artifact's max batch 8"):
        FeedBuilder(Spec(batch_max=8), batch=9)
    with pytest.raises(UserError, match="--batch must be >= 1"):
        FeedBuilder(Spec(), batch=0)
    b = FeedBuilder(Spec(class_input="class_id", classes=("a", "b")), batch=1)
    with pytest.raises(UserError, match=r"class id 2 is outside 0..1 \(a, b\)"):
        b.put(0, frame(8, 12), class_id=2)
    with pytest.raises(UserError, match="must be uint8 images"):
        b.put(0, np.zeros((8, 12, 3), np.float32))


def test_batches_cover_every_frame_in_order():
    frames = [frame(8, 12, v) for v in range(5)]
    b = FeedBuilder(Spec(class_input="class_id", classes=("a", "b", "c")), batch=2)
    seen = []
    for part, feeds in b.batches(frames, [0, 1, 2, 0, 1]):
        n = part.stop - part.start
        seen += [(int(feeds["image"][i].max()), int(feeds["class_id"][i])) for i in range(n)]
    assert seen == [(0, 0), (1, 1), (2, 2), (3, 0), (4, 1)]
    with pytest.raises(UserError, match="one class id per frame"):
        list(b.batches(frames, [0]))
