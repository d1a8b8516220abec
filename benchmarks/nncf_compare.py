"""INT8 recipes on the tiny model against the accuracy gate's map error: NNCF (plain and accuracy-controlled),
ONNX Runtime's Q/DQ with 8- and 7-bit weights, and ``aaclip-calibrate int8``'s accuracy search with either
(docs/calibration.md, "Why our own search and not NNCF's").

    python -m aaclip.benchmarks.nncf_compare --work /tmp/nncf-compare [--accuracy-control]

Same FP32 export, calibration frames and held-out frames (``calibration.int8``'s split and held-out set) for
every row; the map error is the gate's (max |map - FP32| / FP32 range on the held-out frames), all on ONNX Runtime
CPU. NNCF needs ``pip install nncf`` (the ``compare`` extra); ``--accuracy-control`` adds NNCF's
``quantize_with_accuracy_control`` (minutes: it re-validates after every reverted quantizer).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import click
import numpy as np
from aaclip.contract.cli import verbosity

log = logging.getLogger(__name__)


def _initializers_from_constants(model):
    """Constant-node weights as initializers (NNCF's ONNX backend reads weights from initializers only)."""
    from onnx import numpy_helper

    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t),
                                                                   node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


@click.command()
@click.option("--work", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the tiny checkpoint, its export, the frames and the graphs.")
@click.option("--accuracy-control", is_flag=True, help="Also run NNCF's quantize_with_accuracy_control (slow).")
@verbosity
def main(work: Path, accuracy_control: bool) -> None:
    import cv2
    import onnx
    import onnxruntime as ort
    from aaclip.calibration import int8 as I
    from aaclip.calibration.gate import map_error
    from aaclip.calibration.inputs import folder_input
    from aaclip.contract.manifest import load_manifest
    from aaclip.export.onnx_export import export_onnx
    from aaclip.train.checkpoint import random_checkpoint
    from aaclip.data.synth import draw_product

    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "model.onnx"
    if not fp32.is_file():
        random_checkpoint(work / "ckpt", backbone="aaclip-tiny", image_size=64,
                          classes={"disk": "metal disk", "wood": "wooden board"}, seed=0, trainable_seed=1)
        export_onnx(work / "ckpt", fp32, classes=["disk"])
        rng = np.random.default_rng(7)
        (work / "good").mkdir(exist_ok=True)
        for i in range(24):
            cv2.imwrite(str(work / "good" / f"{i:02d}.png"), draw_product("disk", rng, 64))
    m = load_manifest(fp32)
    items = I._collect(folder_input(work / "good", 0), m, 128)
    calib, held = I.split_holdout(items)
    test_items, _, _ = I.holdout_set(m, held, None, 16, 0, 64)
    calib_x = np.stack([it.frame for it in calib])
    test_x = np.stack([it.frame for it in test_items])

    def maps(model_or_path) -> np.ndarray:
        src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
        session = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(["anomaly_map"], {m.input_name: test_x[i:i + 1]})[0]
                               for i in range(len(test_x))])

    ref = maps(fp32)
    rows = []

    def row(name: str, t0: float, err: float) -> None:
        rows.append((name, err, time.perf_counter() - t0))
        click.echo(f"{name}: map error {100 * err:.2f}% of the range, {rows[-1][2]:.0f} s")

    cids = np.zeros(len(calib_x), np.int64)
    for bits in (8, 7):
        t0 = time.perf_counter()
        out = work / f"ort-w{bits}.onnx"
        I.quantize_graph(fp32, out, calib_x, cids, m, weight_bits=bits)
        row(f"ONNX Runtime Q/DQ, {bits}-bit weights, everything INT8", t0, map_error(ref, maps(out)))
    for bits in (8, 7):
        t0 = time.perf_counter()
        result = I.quantize_artifact(fp32, folder_input(work / "good", 0), None, I.Int8Options(
            out=work / f"searched-w{bits}.int8.onnx", holdout=16, force=True, discard_calibration=True,
            weight_bits=bits))
        row(f"accuracy search, {bits}-bit weights: {len(result.search.low)} of {len(result.units)} units INT8 "
            f"({result.search.evaluations} evaluations)", t0, map_error(ref, maps(result.out)))
    try:
        import nncf
    except ImportError:
        click.echo("nncf is not installed (pip install nncf): NNCF rows left out")
        nncf = None
    if nncf is not None:
        model = _initializers_from_constants(onnx.load(str(fp32)))
        calibration = nncf.Dataset([x[None] for x in calib_x], lambda x: {m.input_name: x})
        t0 = time.perf_counter()
        plain = nncf.quantize(model, calibration, model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.PERFORMANCE)
        row(f"NNCF {nncf.__version__} quantize (transformer, performance preset)", t0, map_error(ref, maps(plain)))
        if accuracy_control:
            t0 = time.perf_counter()
            controlled = nncf.quantize_with_accuracy_control(
                model, calibration, nncf.Dataset([0]), lambda q, _: 1.0 - map_error(ref, maps(q)), max_drop=0.01,
                drop_type=nncf.DropType.ABSOLUTE, model_type=nncf.ModelType.TRANSFORMER,
                preset=nncf.QuantizationPreset.PERFORMANCE)
            row(f"NNCF {nncf.__version__} quantize_with_accuracy_control (max drop 0.01)", t0,
                map_error(ref, maps(controlled)))
    click.echo("\n| method | map error / range | gate (<= 1%) | seconds |\n|---|---|---|---|")
    for name, err, seconds in rows:
        click.echo(f"| {name} | {100 * err:.2f}% | {'passes' if err <= 0.01 else 'fails'} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
