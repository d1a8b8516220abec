"""Graph-vs-PyTorch parity and export peak memory of every model family on a real backbone with random weights.

    python -m aaclip.benchmarks.family_parity --backbone ViT-L-14-336 --out parity-vitl [--methods ...]

Opt-in (tens of minutes on CPU; the test suite checks the same on the tiny config). Steps:

1. Random CLIP weights for ``--backbone`` in OpenAI's format (OpenCLIP's keys of the OpenAI models), rounded
   to float16 values like OpenAI's release, written once as safetensors.
2. Per family, its checkpoint at its reference resolution (``--size`` overrides; CLIP-AD: the backbone's
   native size, Res2CLIP: 518): ``init`` for the training-free ones (Res2CLIP's bank from synthetic normal
   parts); the trainable ones get random weights in place of training (seeded; Res2CLIP's zero-initialized
   output layers too, so the adapters really act).
3. Export of the FP32 and FP16 graphs, each in its own process: the peak resident memory of that process
   (``peak_rss.run_measured``, which keeps this process's own peak out) is the export's peak. ``--baseline`` exports AA-CLIP's FP32 graph the same way.
4. The same synthetic frames through the PyTorch model (FP32) and both graphs (ONNX Runtime, CPU); the
   comparator of ``aaclip-export --verify``: max |map error| / map range, max |cls_score error|.
5. Per family, which behaviours of its official code the checkpoint's (default) config reproduces and which
   option changes each (``aaclip.train.fidelity``); the stage-by-stage comparison with the official
   computation itself is ``tests/test_peer_fidelity.py`` (tiny config).

Writes ``parity.json`` and ``parity.md`` into ``--out`` and prints the table. Limits checked (exit status 1
when one fails): FP32 map <= 1e-4 of the range and cls <= 1e-5; FP16 map and cls <= 1e-3.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import click
import numpy as np
from aaclip.contract.cli import Command

from .peak_rss import run_measured

log = logging.getLogger(__name__)

METHODS = ("clip-ad", "clip-ad-plus", "res2clip", "res2clip-ft")
LIMITS = {"fp32": (1e-4, 1e-5), "fp16": (1e-3, 1e-3)}  # (map error / range, cls error)
CLASS = "disk"
TRAINED_SCALE = 0.02  # std of the random stand-in for trained weights (zero-initialized layers included)


def openai_format_weights(name: str, path: Path, seed: int) -> Path:
    """Seeded random weights of ``name`` (OpenCLIP = OpenAI key layout), float16-rounded, as safetensors."""
    from aaclip.train.common.backbone import write_random_weights
    from safetensors.torch import load_file, save_file

    if path.is_file():
        return path
    write_random_weights(name, path, seed=seed)
    state = {k: v.half().float().contiguous() for k, v in load_file(str(path)).items()}
    save_file(state, str(path))
    return path


def family_size(method: str, backbone: str, size: Optional[int]) -> int:
    if size:
        return size
    if method.startswith("res2clip"):
        return 518
    from aaclip.train.families.clip_ad.config import native_image_size

    return native_image_size(backbone) or 336


def make_checkpoint(method: str, weights: Path, backbone: str, size: int, out: Path, seed: int) -> Path:
    """The family's checkpoint with random stand-ins for trained weights and, for Res2CLIP, a real bank."""
    import torch
    from aaclip.train.checkpoint import init_checkpoint, load_checkpoint
    from aaclip.train.common.checkpoint_files import save_checkpoint
    from aaclip.train.common.config import BackboneConfig
    from aaclip.train.families import get_family

    family = get_family(method)
    config = family.config_class(backbone=BackboneConfig(name=backbone, weights=str(weights)), image_size=size,
                                 classes={CLASS: family.object_name(CLASS)})
    refs = None
    if family.references:
        import cv2
        from aaclip.data import synth

        folder = out.parent / f"refs-{size}" / CLASS
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for i in range(config.shots):
            cv2.imwrite(str(folder / f"{i}.png"), synth.draw_product(CLASS, rng, size))
        refs = {CLASS: sorted(folder.glob("*.png"))[:config.shots]}
    init_checkpoint(out, config, seed, refs)
    if family.trainable:
        model = load_checkpoint(out)
        gen = torch.Generator().manual_seed(seed)
        state = model.trainable_state_dict()
        for key, value in state.items():
            if key != "reference_bank":
                state[key] = value + TRAINED_SCALE * torch.randn(value.shape, generator=gen)
        model.load_trainable_state_dict(state)
        save_checkpoint(model, out)
        del model
    return out


def export_in_child(ckpt: Path, out: Path, precision: str) -> dict:
    """``aaclip-export`` in its own process; its wall time and its own peak resident memory (measured by
    ``peak_rss.run_measured``: this process has run a PyTorch ViT and its peak must not leak in)."""
    cmd = [sys.executable, "-m", "aaclip.export.cli", str(ckpt), "--precision", precision, "--out", str(out), "-q"]
    run = run_measured(cmd, capture=True)
    if run.exit_code != 0:
        raise RuntimeError(f"export of {ckpt.name} ({precision}) failed: {run.stderr[-2000:]}")
    return {"seconds": run.seconds, "peak_rss_gb": round(run.peak_rss_mb / 1024, 2),
            "size_mb": round(out.stat().st_size / 1e6, 1), "command": " ".join(cmd[2:])}


def frames_at(size: int, n: int, seed: int) -> np.ndarray:
    from aaclip.data import synth

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = synth.draw_product(CLASS, rng, size)
        if i % 2:
            img, _ = synth.add_defect(img, rng, class_name=CLASS)
        out.append(img)
    return np.stack(out)


def reference_outputs(ckpt: Path, frames: np.ndarray) -> dict:
    import torch
    from aaclip.export.graph import reference_preprocess
    from aaclip.export.onnx_export import compute_anchors
    from aaclip.train.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt)
    size = model.config.image_size
    constants = compute_anchors(model, [model.config.classes[CLASS]])[0]
    with torch.no_grad():
        amap, cls = model.predict(reference_preprocess(frames, (size, size), size), constants)
    amap = amap.numpy()
    return {"anomaly_map": amap, "map_max": amap.reshape(len(amap), -1).max(1), "cls_score": cls.numpy()}


def graph_outputs(path: Path, frames: np.ndarray) -> dict:
    from aaclip.runtime.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"]) as runner:
        return {k: np.array(v) for k, v in runner.infer({"image": frames}).items()}


def check_family(method: str, weights: Path, backbone: str, size: int, work: Path, frames_n: int,
                 seed: int) -> dict:
    from aaclip.export.verify import TOLERANCES, compare_outputs

    from dataclasses import asdict

    from aaclip.train.checkpoint import load_config
    from aaclip.train.fidelity import official_behaviours

    ckpt = make_checkpoint(method, weights, backbone, size, work / method, seed)
    frames = frames_at(size, frames_n, seed)
    row: dict = {"method": method, "image_size": size,
                 "official": [asdict(b) for b in official_behaviours(load_config(ckpt / "config.json"))]}
    t0 = time.time()
    ref = reference_outputs(ckpt, frames)
    row["pytorch_seconds"] = round(time.time() - t0, 1)
    for precision in ("fp32", "fp16"):
        path = work / f"{method}.{precision}.onnx"
        row[f"export_{precision}"] = export_in_child(ckpt, path, precision)
        rep = compare_outputs(ref, graph_outputs(path, frames), TOLERANCES[precision])
        map_lim, cls_lim = LIMITS[precision]
        row[precision] = {"map_rel": rep.map_rel, "map_range": rep.map_range, "cls_max_abs": rep.cls_max_abs,
                          "map_corr_min": rep.map_corr_min, "top_iou_min": rep.top_iou_min,
                          "passed": bool(rep.map_rel <= map_lim and rep.cls_max_abs <= cls_lim)}
        path.unlink()
        log.info("%s %s: map %.3g of range, cls %.3g", method, precision, rep.map_rel, rep.cls_max_abs)
    return row


def markdown(rows: list[dict], baseline: Optional[dict], backbone: str) -> str:
    lines = [f"| family ({backbone}, random OpenAI-format weights) | size | FP32 map err / range | FP32 cls err | "
             "FP16 map err / range | FP16 cls err | export peak RSS FP32 / FP16 (GB) | pass |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["fp32"], r["fp16"]
        lines.append(f"| {r['method']} | {r['image_size']} | {a['map_rel']:.2e} | {a['cls_max_abs']:.2e} | "
                     f"{b['map_rel']:.2e} | {b['cls_max_abs']:.2e} | {r['export_fp32']['peak_rss_gb']} / "
                     f"{r['export_fp16']['peak_rss_gb']} | {'yes' if a['passed'] and b['passed'] else 'NO'} |")
    if baseline:
        lines.append(f"| aa-clip (baseline, export only) | {baseline['image_size']} | | | | | "
                     f"{baseline['peak_rss_gb']} / - | |")
    return "\n".join(lines + official_tables(rows))


def official_tables(rows: list[dict]) -> list[str]:
    """Per family: the official behaviours its checkpoint reproduces and the options that change them."""
    from aaclip.train.fidelity import Behaviour
    from aaclip.train.fidelity import markdown as behaviour_table

    out: list[str] = []
    for r in rows:
        if r.get("official"):
            out += ["", *behaviour_table(f"{r['method']} at {r['image_size']} px",
                                         [Behaviour(**b) for b in r["official"]])]
    return out


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--backbone", default="ViT-L-14-336", show_default=True, help="OpenCLIP model name.")
@click.option("--methods", default=",".join(METHODS), show_default=True, help="Comma-separated families.")
@click.option("--size", type=int, help="Image size for every family [default: each family's reference size].")
@click.option("--frames", "frames_n", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also export AA-CLIP's FP32 graph (518 px or --size) for its export peak memory.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def cli(backbone: str, methods: str, size: Optional[int], frames_n: int, baseline: bool, seed: int, out: Path) -> None:
    """Parity (FP32, FP16) and export peak memory of each family on a random real backbone (see module doc)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    out.mkdir(parents=True, exist_ok=True)
    weights = openai_format_weights(backbone, out / f"{backbone}-random-openai.safetensors", seed)
    rows, base = [], None
    for method in [m.strip() for m in methods.split(",") if m.strip()]:
        rows.append(check_family(method, weights, backbone, family_size(method, backbone, size), out, frames_n, seed))
        (out / "parity.json").write_text(json.dumps({"rows": rows}, indent=2))
    if baseline:
        base_size = size or 518
        ckpt = make_checkpoint("aa-clip", weights, backbone, base_size, out / "aa-clip", seed)
        base = export_in_child(ckpt, out / "aa-clip.fp32.onnx", "fp32") | {"image_size": base_size}
        (out / "aa-clip.fp32.onnx").unlink()
    table = markdown(rows, base, backbone)
    (out / "parity.json").write_text(json.dumps({"rows": rows, "baseline": base}, indent=2))
    (out / "parity.md").write_text(table + "\n")
    click.echo(table)
    if not all(r["fp32"]["passed"] and r["fp16"]["passed"] for r in rows):
        raise SystemExit(1)


def main(argv: Optional[list[str]] = None) -> None:
    cli.main(args=argv)


if __name__ == "__main__":
    main()
