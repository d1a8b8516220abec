"""Measure how closely each deployable resize matches training's PIL bicubic on full-HD frames.

    python -m aaclip.export.resize_check [--frames 5] [--size 518] [--images DIR]

Training (SPEC section 1) resizes 8-bit RGB with PIL bicubic (antialiased when shrinking). A deployed
frame is resized either by the runtime (``fit_frame``: cv2 INTER_AREA when shrinking, INTER_CUBIC when
enlarging) or inside the graph (``--input-size``). Every candidate is compared with PIL's uint8 output in
[0, 1] pixel units, with the share of pixels equal to PIL's; the table goes into docs/export.md.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import click
import numpy as np
from aaclip.contract.cli import Command
from aaclip.contract.files import is_image_file

from .resize import graph_resize_numpy, pil_bicubic_weights

log = logging.getLogger(__name__)

FULL_HD = (1080, 1920)


def _pil(rgb: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0


def _cv2(interp: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def run(rgb: np.ndarray, size: int) -> np.ndarray:
        import cv2

        return cv2.resize(rgb, (size, size), interpolation=interp).astype(np.float64) / 255.0

    return run


def _torch(mode: str, antialias: bool) -> Callable[[np.ndarray, int], np.ndarray]:
    """F.interpolate in float: what ONNX Resize (linear/cubic, half_pixel, opset 18 antialias) computes."""

    def run(rgb: np.ndarray, size: int) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
        y = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=antialias)
        return y[0].permute(1, 2, 0).double().numpy() / 255.0

    return run


def _matmul(clip: bool) -> Callable[[np.ndarray, int], np.ndarray]:
    """The graph's resize: PIL bicubic weights as two float32 MatMuls, horizontal pass first."""

    def run(rgb: np.ndarray, size: int) -> np.ndarray:
        wh = pil_bicubic_weights(rgb.shape[0], size).astype(np.float32)
        ww = pil_bicubic_weights(rgb.shape[1], size).astype(np.float32)
        tmp = np.einsum("hwc,pw->hpc", rgb.astype(np.float32), ww)
        if clip:
            tmp = np.clip(tmp, 0.0, 255.0)
        return np.einsum("oh,hpc->opc", wh, tmp).astype(np.float64) / 255.0

    return run


def _exact(rgb: np.ndarray, size: int) -> np.ndarray:
    """The graph's resize (``PilResizeGraph``): Pillow's 8-bit arithmetic as float32 digit MatMuls."""
    return graph_resize_numpy(rgb, size, size).astype(np.float64) / 255.0


def candidates() -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    import cv2

    return {
        "cv2 INTER_AREA (runtime fit_frame, shrinking)": _cv2(cv2.INTER_AREA),
        "cv2 INTER_CUBIC (runtime fit_frame, enlarging)": _cv2(cv2.INTER_CUBIC),
        "cv2 INTER_LINEAR": _cv2(cv2.INTER_LINEAR),
        "in-graph bilinear (ONNX Resize linear)": _torch("bilinear", False),
        "in-graph bilinear + antialias (Resize opset 18)": _torch("bilinear", True),
        "in-graph bicubic (ONNX Resize cubic)": _torch("bicubic", False),
        "in-graph bicubic + antialias (Resize opset 18)": _torch("bicubic", True),
        "in-graph PIL-bicubic MatMul, no intermediate clip": _matmul(False),
        "in-graph PIL-bicubic MatMul + clip (float weights, no rounding)": _matmul(True),
        "in-graph PIL 8-bit exact (aaclip-export default)": _exact,
    }


def synthetic_full_hd(n: int, seed: int = 0, hw: tuple[int, int] = FULL_HD) -> list[np.ndarray]:
    """BGR frames (full HD by default) of the synthetic products (aaclip.data.synth), cropped from squares."""
    from aaclip.data import synth

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        name = synth.CLASSES[i % len(synth.CLASSES)]
        img = synth.draw_product(name, rng, max(hw))
        top = (img.shape[0] - hw[0]) // 2
        frames.append(np.ascontiguousarray(img[top:top + hw[0], : hw[1]]))
    return frames


def folder_frames(folder: Path, n: int) -> list[np.ndarray]:
    import cv2

    paths = sorted(p for p in Path(folder).rglob("*") if is_image_file(p))[:n]
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    return [f for f in frames if f is not None]


def measure(frames_bgr: Sequence[np.ndarray], size: int) -> list[dict]:
    """Per candidate: max and mean |candidate - PIL bicubic| over all frames, in [0, 1] pixel units, and the
    share of values equal to PIL's after rounding to 8 bits."""
    rows = {name: [0.0, 0.0, 0, 0] for name in candidates()}
    for bgr in frames_bgr:
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        ref = _pil(rgb, size)
        for name, fn in candidates().items():
            out = fn(rgb, size)
            diff = np.abs(out - ref)
            row = rows[name]
            row[0] = max(row[0], float(diff.max()))
            row[1] += float(diff.sum())
            row[2] += diff.size
            row[3] += int((np.clip(np.floor(out * 255.0 + 0.5), 0, 255) == np.round(ref * 255.0)).sum())
    return [{"candidate": k, "max_abs": v[0], "mean_abs": v[1] / max(v[2], 1), "equal": v[3] / max(v[2], 1)}
            for k, v in rows.items()]


def markdown_table(rows: Sequence[dict], source: str) -> str:
    lines = [f"| resize ({source}) vs PIL bicubic | max abs | mean abs | pixels equal |", "|---|---|---|---|"]
    lines += [f"| {r['candidate']} | {r['max_abs']:.4f} | {r['mean_abs']:.5f} | {100 * r['equal']:.2f}% |"
              for r in rows]
    return "\n".join(lines)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--frames", "n", type=click.IntRange(min=1), default=5, show_default=True, help="Number of frames.")
@click.option("--size", type=click.IntRange(min=8), default=518, show_default=True, help="Model resolution.")
@click.option("--camera", default="1080x1920", show_default=True, help="Synthetic frame size HxW.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of camera frames [default: synthetic frames of --camera size].")
def cli(n: int, size: int, camera: str, images: Optional[Path]) -> None:
    """Print a markdown table: each resize candidate vs PIL bicubic, max/mean abs difference in [0,1] units."""
    from .onnx_export import parse_input_size

    frames = folder_frames(images, n) if images else synthetic_full_hd(n, hw=parse_input_size(camera))
    if not frames:
        raise click.UsageError(f"no readable images in {images}")
    h, w = frames[0].shape[:2]
    click.echo(markdown_table(measure(frames, size), f"{len(frames)} frames {w}x{h} -> {size}x{size}"))


def main(argv: Optional[list[str]] = None) -> None:
    cli.main(args=argv)


if __name__ == "__main__":
    main()
