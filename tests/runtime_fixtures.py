"""Tiny artifacts obeying docs/graph-contract.md, built without the export code, plus synthetic videos.

The graph scores "darkness": ``anomaly_map = (255 - mean over BGR) / 255 (+ a per-class offset)``,
``map_max`` its per-image max and ``cls_score`` its per-image mean. Frames are light grey (200), and a
"defect" is a black disc, so a defect frame has ``map_max`` near 1 and a clean one near 0.216.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from aaclip.contract.files import sha256_file
from aaclip.contract.manifest import write_manifest

BACKGROUND = 200
CLEAN_LEVEL = (255 - BACKGROUND) / 255.0  # anomaly_map value of a clean pixel (0.2157)
SIZE = 64


def build_darkness_onnx(path: Path, height: int = SIZE, width: int = SIZE,
                        class_offsets: Optional[Sequence[float]] = None) -> Path:
    """Write the darkness graph (uint8 NHWC BGR in; anomaly_map, map_max, cls_score out)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", height, width, 3])]
    inits = [numpy_helper.from_array(np.array(255.0, np.float32), "c255")]
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["mean_c"], axes=[3], keepdims=0),
        helper.make_node("Sub", ["c255", "mean_c"], ["inv"]),
        helper.make_node("Div", ["inv", "c255"], ["dark"]),
    ]
    map_name = "dark"
    if class_offsets is not None:
        inputs.append(helper.make_tensor_value_info("class_id", TensorProto.INT64, ["B"]))
        inits += [numpy_helper.from_array(np.asarray(class_offsets, np.float32), "offsets"),
                  numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape_b11")]
        nodes += [helper.make_node("Gather", ["offsets", "class_id"], ["off"], axis=0),
                  helper.make_node("Reshape", ["off", "shape_b11"], ["off3"]),
                  helper.make_node("Add", ["dark", "off3"], ["shifted"])]
        map_name = "shifted"
    nodes += [
        helper.make_node("Identity", [map_name], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["map_max"], axes=[1, 2], keepdims=0),
        helper.make_node("ReduceMean", ["anomaly_map"], ["cls_score"], axes=[1, 2], keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["B", height, width]),
               helper.make_tensor_value_info("map_max", TensorProto.FLOAT, ["B"]),
               helper.make_tensor_value_info("cls_score", TensorProto.FLOAT, ["B"])]
    graph = helper.make_graph(nodes, "darkness", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="runtime-tests")
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def manifest_dict(artifact: Path, height: int = SIZE, width: int = SIZE, classes: Sequence[str] = ("bottle",),
                  multi_class: bool = False, threshold: float = 0.5, map_weight: float = 0.5,
                  batch: Optional[dict] = None, tensorrt: Optional[dict] = None) -> dict:
    fmt = "engine" if tensorrt else "onnx"
    return {
        "format": "aaclip-manifest",
        "format_version": 1,
        "method": "test-darkness",
        "created": "2026-11-23T21:00:00+00:00",
        "artifact": {"file": artifact.name, "format": fmt, "sha256": sha256_file(artifact),
                     "size_bytes": artifact.stat().st_size, "external_data": []},
        "precision": "fp32",
        "source": {"checkpoint": "runs/test/ckpt", "checkpoint_sha256": None, "onnx_sha256": None},
        "model": {"backbone": "none", "image_size": height, "domain": "industrial"},
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "color": "BGR",
                  "height": height, "width": width, "batch": batch},
        "class_input": {"name": "class_id", "dtype": "int64"} if multi_class else None,
        "classes": [{"id": i, "name": n, "object_name": n} for i, n in enumerate(classes)],
        "outputs": [{"name": "anomaly_map", "dtype": "float32", "shape": ["B", height, width]},
                    {"name": "map_max", "dtype": "float32", "shape": ["B"]},
                    {"name": "cls_score", "dtype": "float32", "shape": ["B"]}],
        "score": {"map_lo": 0.0, "map_hi": 1.0, "cls_lo": 0.0, "cls_hi": 1.0, "map_weight": map_weight,
                  "threshold": threshold, "pixel_threshold": 0.5, "source": "default", "calibration": None},
        "tools": {"aaclip-edge": "0.1.0", "onnx": "1.x", "opset": 17},
        "tensorrt": tensorrt,
        "rebuild_command": f"aaclip-export runs/test/ckpt --format {fmt} --out {artifact.name}",
    }


def make_onnx_artifact(directory: Path, name: str = "model.onnx", classes: Sequence[str] = ("bottle",),
                       class_offsets: Optional[Sequence[float]] = None, **manifest_kwargs) -> Path:
    """The darkness graph plus its manifest; multi-class when ``class_offsets`` is given."""
    path = build_darkness_onnx(Path(directory) / name, class_offsets=class_offsets)
    write_manifest(path, manifest_dict(path, classes=classes, multi_class=class_offsets is not None,
                                       **manifest_kwargs))
    return path


def frame_image(defect: bool, size: tuple[int, int] = (96, 128), seed: int = 0) -> np.ndarray:
    """A grey frame with mild texture; ``defect`` adds a black disc in the middle."""
    h, w = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), BACKGROUND, np.uint8)
    img += rng.integers(0, 6, size=(h, w, 1), dtype=np.uint8)  # texture, keeps pixels >= 200
    if defect:
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 8, (0, 0, 0), -1)
    return img


def write_video(path: Path, n_frames: int, defect_frames: Sequence[int] = (), size: tuple[int, int] = (96, 128),
                fps: float = 10.0) -> Path:
    """An MJPG .avi of ``n_frames`` frames with defects drawn on ``defect_frames``."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "MJPG VideoWriter unavailable"
    for i in range(n_frames):
        writer.write(frame_image(i in set(defect_frames), size, seed=i))
    writer.release()
    return path


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---- aaclip-runtime as a subprocess (signals, exit codes) -------------------------------------------
def runtime_env() -> dict:
    """The environment for ``python -m aaclip.runtime.cli``: ``aaclip`` importable from this checkout."""
    import aaclip.runtime

    root = Path(aaclip.runtime.__file__).parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def start_runtime(*args) -> subprocess.Popen:
    """``aaclip-runtime ARGS`` running, its stdout and stderr piped (text)."""
    return subprocess.Popen([sys.executable, "-m", "aaclip.runtime.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=runtime_env())


def wait_for(proc: subprocess.Popen, done, seconds: float = 60) -> None:
    """Until ``done()`` or ``proc`` exits; ``seconds`` only stops a hung test."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None and not done():
        time.sleep(0.05)


def signal_when(proc: subprocess.Popen, ready, sig) -> tuple[str, str]:
    """Once ``ready()`` holds while ``proc`` still runs, send it ``sig``; its (stdout, stderr) after it ends."""
    try:
        wait_for(proc, ready)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
