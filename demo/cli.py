"""`aaclip-demo`: the whole pipeline on an embedded default, with no downloads.

One synthetic product line (brushed metal plates; defects of five kinds drawn on copies of good plates)
stands in for MVTec/VisA, and a tiny randomly initialized OpenCLIP config (`aaclip-tiny` at 96 px)
stands in for the ViT-L-14-336 weights. With the default seed the tiny model learns the line: image
AUROC rises with training, and on the conveyor video most defective frames alarm and no good one does
after calibration on a clean line recording. Other --seed values draw other random CLIP weights, on
most of which the tiny model detects far fewer defective frames. None of this is AA-CLIP's accuracy,
which needs the real CLIP weights (see README, "What the demo can and cannot show").

`--method NAME` runs the same pipeline with another model family (`aaclip-train methods`): a trainable
one trains with its own trainer and quick-run options (``QUICK_OPTIONS``), a training-free one skips
training; a family that keeps per-class references (Res2CLIP) gets them from the normal training images.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import click
from aaclip.contract.cli import Command, setup_logging
from aaclip.contract.errors import UserError

log = logging.getLogger("aaclip.demo")

BACKBONE = "aaclip-tiny"
IMAGE_SIZE = 96  # model resolution of the tiny config (12 x 12 patch grid: defects cover a few patches)
DATA_SIZE = 128  # synthetic images are larger: the pre-processing resize is exercised
CAMERA_CLASS = "plate"  # one product line: brushed metal plates
TRAIN_IMAGES = 96  # good plates, and as many copies of them with a drawn defect
TEST_IMAGES = 128  # good and defective plates each: enough for the image AUROC to mean something
FRAMES_PER_PART = 8  # each part is seen for a few frames as it passes the camera
CAMERA_PARTS = 8
CAMERA_DEFECTIVE_PARTS = frozenset({2, 5})
CAMERA_FRAMES = CAMERA_PARTS * FRAMES_PER_PART
# A clean recording of the line: many different good parts, two frames each (the scores of one part's frames
# hardly differ; what the threshold must cover is how much good parts differ from each other)
CALIBRATION_PARTS = 128
CALIBRATION_FRAMES_PER_PART = 2
CALIBRATION_FRAMES = CALIBRATION_PARTS * CALIBRATION_FRAMES_PER_PART
CALIBRATION_FAR = 0.01  # per-frame false-alarm rate the demo's threshold targets
# One product line: good plates, and as many copies of them with a drawn defect (``paired``)
DATASET = dict(classes=[CAMERA_CLASS], n_train_normal=TRAIN_IMAGES, n_train_anomalous=TRAIN_IMAGES,
               n_test_normal=TEST_IMAGES, n_test_anomalous=TEST_IMAGES, paired=True)
# Quick-run hyper-parameters: the tiny model learns in seconds with larger learning rates than the
# paper's (which are `aaclip-train`'s defaults for real backbones).
TRAIN = dict(stage1_epochs=1, stage2_epochs=3, stage1_batch=8, stage2_batch=4, stage1_lr=1e-3, stage2_lr=2e-3)
# CLIP-AD's 8 px smoothing is the official one at 240 px; the tiny model's 96 px images get 8 * 96 / 240 ~ 3 px.
FAMILY_FIELDS = {"clip-ad": {"sigma": 3.0}, "clip-ad-plus": {"sigma": 3.0}}
# One intra-op thread for PyTorch and ONNX Runtime: the tiny model's operations are too small for a thread pool
# to pay off, and on shared cores (CI, a busy laptop) two spinning pools slowed training twenty-fold.
THREADS = 1
# The other trainable families' quick runs (their options classes; same idea: a few epochs, larger rates).
QUICK_OPTIONS = {"clip-ad-plus": dict(epochs=3, batch=8, lr=1e-3), "res2clip-ft": dict(epochs=2, batch=8, lr_v=2e-3,
                                                                                          lr_t=1e-3)}


_STARTED = time.time()


def _step(n: int, total: int, text: str) -> None:
    click.echo(f"[{n}/{total}] {text}  (+{time.time() - _STARTED:.0f} s)", err=True)


def write_camera_video(path: Path, n_parts: int, defective_parts: frozenset[int], seed: int,
                       frames_per_part: int = FRAMES_PER_PART) -> list[int]:
    """A synthetic conveyor recording (MJPG .avi, 240x240): ``n_parts`` different parts pass the camera,
    ``frames_per_part`` frames each; the parts in ``defective_parts`` carry defects. Returns the defect frames."""
    import cv2
    from aaclip.contract.files import atomic_path
    from aaclip.data.synth import synthetic_video_frames

    frames, defect_frames = [], []
    for part in range(n_parts):
        bad = set(range(frames_per_part)) if part in defective_parts else set()
        clip, _ = synthetic_video_frames(CAMERA_CLASS, frames_per_part, bad, size=240, seed=seed * 1000 + part)
        defect_frames += [len(frames) + i for i in sorted(bad)]
        frames += clip
    with atomic_path(path, suffix=".avi") as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (240, 240))
        for f in frames:
            writer.write(f)
        writer.release()
    return defect_frames


@contextmanager
def torch_threads(n: int):
    """PyTorch's intra-op thread count set to ``n`` inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_model(model, train, root: Path, ckpt: Path, seed: int) -> str:
    """Train ``model`` with its family's trainer and the demo's quick options; returns what was done."""
    from aaclip.train.families import DEFAULT_METHOD, get_family

    method = model.config.method
    family = get_family(method)
    if method == DEFAULT_METHOD:
        from aaclip.train.families.aa_clip.trainer import Trainer, TrainOptions

        Trainer(model, train, root, ckpt, TrainOptions(seed=seed, **TRAIN)).run()
        return "two-stage training (text adapters, then image adapters)"
    options = family.train_options(seed=seed, **QUICK_OPTIONS.get(method, {}))
    family.trainer(model, train, root, ckpt, options).run()
    return f"{method} training ({family.train_options.__name__})"


def prepare_checkpoint(ckpt: Path, out: Path, method: str, paths: dict, seed: int):
    """The demo's random tiny checkpoint of ``method`` (its CLIP weights outside it, as real ones would be);
    a trainable family's classes come from the data at training time, a training-free one gets them now
    (and its references from the normal training images)."""
    from aaclip.train.checkpoint import load_checkpoint, random_checkpoint
    from aaclip.train.common.checkpoint_files import save_checkpoint
    from aaclip.train.families import get_family
    from aaclip.data.records import class_names, read_records

    family = get_family(method)
    classes = {} if family.trainable else {c: family.object_name(c) for c in class_names(read_records(paths["train"]))}
    random_checkpoint(ckpt, method=method, backbone=BACKBONE, image_size=IMAGE_SIZE, classes=classes, seed=seed,
                      weights_file=str((out / "clip" / f"{BACKBONE}.safetensors").resolve()),
                      fields=dict(FAMILY_FIELDS.get(method, {})))
    model = load_checkpoint(ckpt)
    if family.references and classes:
        from aaclip.data.references import reference_paths
        from aaclip.train.families.res2clip.bank import add_references

        add_references(model, reference_paths(list(classes), model.config.shots, data=paths["train"]))
        save_checkpoint(model, ckpt)
    return model


def run_demo(out: Path, seed: int = 0, method: str = "aa-clip") -> dict:
    """Run every stage into ``out`` with model family ``method``; returns a summary dict (also written to
    out/summary.json)."""
    with torch_threads(THREADS):
        return _run_stages(Path(out), seed, method)


def _run_stages(out: Path, seed: int, method: str) -> dict:
    from aaclip.contract.files import atomic_write_json, atomic_write_text
    from aaclip.contract.metrics import markdown_table
    from aaclip.train.evaluate import evaluate
    from aaclip.train.families import get_family
    from aaclip.data.records import read_records
    from aaclip.data.synth import generate_dataset

    family = get_family(method)
    total = 6
    summary: dict = {"output": str(out), "method": method}

    _step(1, total, f"synthetic dataset ({', '.join(DATASET['classes'])}: good ones and copies with drawn defects "
                    f"of 5 kinds) and a random tiny {method} model")
    paths = generate_dataset(out / "data", image_size=DATA_SIZE, seed=seed, **DATASET)
    ckpt = out / "checkpoint"
    model = prepare_checkpoint(ckpt, out, method, paths, seed)
    summary["data"] = {k: str(v) for k, v in paths.items()}

    _step(2, total, "evaluation of the untrained model, then training" if family.trainable else
          f"{method} is training-free: no training")
    train = read_records(paths["train"])
    test = read_records(paths["test"])
    untrained = None
    if family.trainable:
        if not family.references:  # a Res2CLIP model has no reference bank before its training builds it
            untrained, _ = evaluate(model, test, paths["test"].parent)
        summary["training"] = train_model(model, train, paths["train"].parent, ckpt, seed)
    else:
        summary["training"] = None

    _step(3, total, "evaluation (SPEC section 7 metrics)")
    report, _ = evaluate(model, test, paths["test"].parent)
    atomic_write_json(out / "eval" / "metrics.json", report)
    atomic_write_text(out / "eval" / "metrics.md", markdown_table(report) + "\n")
    summary["eval"] = {
        "metrics": str(out / "eval" / "metrics.json"),
        "pixel_auroc": {"untrained": untrained["mean"]["pixel_auroc"] if untrained else None,
                        "trained": report["mean"]["pixel_auroc"]},
        "image_auroc": {"untrained": untrained["mean"]["image_auroc"] if untrained else None,
                        "trained": report["mean"]["image_auroc"]},
    }

    _step(4, total, "export: FP32 and FP16 ONNX graphs with manifests, verified against PyTorch")
    from aaclip.export.onnx_export import export_onnx
    from aaclip.contract.manifest import record_parity
    from aaclip.export.verify import TOLERANCES, VerifyOptions, parity_record, verify_artifact

    summary["export"] = {}
    for precision in ("fp32", "fp16"):
        res = export_onnx(ckpt, out / "export" / f"model.{precision}.onnx", precision=precision, model=model)
        parity = verify_artifact(res.path, ckpt, VerifyOptions(frames=8, tolerances=TOLERANCES[precision]))
        summary["export"][precision] = {"artifact": str(res.path), "manifest": str(res.manifest),
                                        "parity_passed": parity.passed, "parity": parity.lines()}
        if not parity.passed:
            raise UserError(f"{res.path.name} failed its parity check: " + "; ".join(parity.lines()))
        record_parity(res.path, [parity_record(parity, precision)])  # the runtime then knows it was verified
    artifact = Path(summary["export"]["fp32"]["artifact"])

    _step(5, total, f"calibration: threshold from a clean line recording ({CALIBRATION_PARTS} good parts, "
                    f"{CALIBRATION_FRAMES} frames)")
    clean = out / "camera" / "clean_line.avi"
    write_camera_video(clean, CALIBRATION_PARTS, frozenset(), seed + 1, CALIBRATION_FRAMES_PER_PART)
    summary["calibration"] = calibrate_demo(artifact, clean, paths["test"], out / "calibration")

    _step(6, total, f"runtime: camera loop on a synthetic conveyor video ({CAMERA_PARTS} parts, "
                    f"{len(CAMERA_DEFECTIVE_PARTS)} defective)")
    video = out / "camera" / "conveyor.avi"
    defect_frames = write_camera_video(video, CAMERA_PARTS, CAMERA_DEFECTIVE_PARTS, seed)
    summary["runtime"] = run_runtime(artifact, video, out / "runtime", defect_frames)

    atomic_write_json(out / "summary.json", summary)
    return summary


def calibrate_demo(artifact: Path, clean_video: Path, test_jsonl: Path, out: Path) -> dict:
    """Calibrate on site: normal frames from the camera set the threshold; labelled test anomalies of the
    camera's class are scored for information only (they never move the threshold), and so are the test
    set's good parts of that class: the held-out catch and false-alarm rates at the calibrated threshold."""
    from aaclip.calibration.inputs import camera_input, data_inputs
    from aaclip.calibration.plot import save_score_histogram
    from aaclip.calibration.score_calibration import ThresholdOptions, calibrate_artifact
    from aaclip.contract.manifest import load_manifest
    from aaclip.runtime.backends import RunnerOptions

    manifest = load_manifest(artifact)
    normals = camera_input(str(clean_video), CALIBRATION_FRAMES, manifest.class_index(CAMERA_CLASS))
    good_parts, anomalies = data_inputs(test_jsonl, manifest, CAMERA_CLASS)
    options = ThresholdOptions(far=CALIBRATION_FAR, backend="onnxruntime", runner=RunnerOptions(threads=THREADS))
    res = calibrate_artifact(artifact, normals, anomalies, options)
    held_out = held_out_rates(artifact, good_parts, res.anomaly_scores, options)
    plotted = save_score_histogram(out / "scores.png", res.normal_scores, res.score["threshold"], res.anomaly_scores)
    cal = res.score["calibration"]
    return {"manifest": str(res.manifest_path), "threshold": res.score["threshold"], "method": cal["method"],
            "frames": cal["frames"], "far": cal["far"], "plot": str(out / "scores.png") if plotted else None,
            "test_anomalies": res.evaluation, "held_out": held_out}


def held_out_rates(artifact: Path, good_parts, defect_scores, options) -> dict:
    """Catch rate (defective test images at or above the calibrated threshold) and false-alarm rate (good test
    images at or above it): images neither training nor calibration saw."""
    from aaclip.calibration.score_calibration import infer_input
    from aaclip.contract.manifest import load_manifest
    from aaclip.contract.score import image_score

    manifest = load_manifest(artifact)  # calibrated now
    good = infer_input(manifest, good_parts, options.backend, options.batch, runner_options=options.runner)
    good_scores = image_score(good.map_max, good.cls_score, manifest.score)
    t = manifest.score.threshold
    caught, alarmed = int((defect_scores >= t).sum()), int((good_scores >= t).sum())
    return {"defective": int(len(defect_scores)), "caught": caught, "catch_rate": caught / len(defect_scores),
            "good": int(len(good_scores)), "false_alarms": alarmed, "false_alarm_rate": alarmed / len(good_scores)}


def run_runtime(artifact: Path, video: Path, out: Path, defect_frames: list[int]) -> dict:
    from aaclip.runtime.backends import RunnerOptions
    from aaclip.runtime.cli import RunConfig, run

    events = out / "events.jsonl"
    if events.exists():
        events.unlink()
    summary = run(RunConfig(artifact, (str(video),), backend="onnxruntime", runner=RunnerOptions(threads=THREADS),
                            classes=(CAMERA_CLASS,), events=events,
                            evidence=out / "evidence", video=out / "annotated.avi", drop=False, stats_every=5.0))
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    flagged = {r["frame"] for r in rows if r["anomalous"]}
    defects = set(defect_frames)
    return {
        "events": str(events), "evidence": str(out / "evidence"), "annotated_video": str(out / "annotated.avi"),
        "frames": summary.frames, "anomalous_frames": summary.anomalous, "alarms": summary.alarms,
        "defect_frames": sorted(defects),
        "defect_frames_flagged": f"{len(flagged & defects)}/{len(defects)}",
        "clean_frames_flagged": f"{len(flagged - defects)}/{len(rows) - len(defects)}",
        "summary": summary.text(),
    }


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("aaclip-demo"), show_default=True,
              help="Folder for everything the demo writes.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random CLIP weights and of the synthetic data; other seeds draw other random weights, "
                   "on most of which the tiny model alarms on fewer defective frames (README).")
@click.option("--method", default="aa-clip", show_default=True, metavar="NAME",
              help="Model family (`aaclip-train methods`): clip-ad, clip-ad-plus, res2clip, res2clip-ft, ...")
@click.option("-v", "--verbose", count=True, help="Log every stage's details (default: warnings and alarms only).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only (the default).")
def cli(out: Path, seed: int, method: str, verbose: int, quiet: bool) -> None:
    """Run the whole pipeline on synthetic data with a tiny random CLIP: data, training (AA-CLIP: two
    stages; training-free families skip it), evaluation, ONNX export (FP32/FP16) with parity checks,
    calibration, and the camera loop on a synthetic conveyor video. Needs no downloads; about 20 s on 2 CPU
    cores (it runs on one thread: under a minute also when another job keeps the other core busy)."""
    setup_logging(verbose, quiet or not verbose)
    start = time.time()
    summary = run_demo(out, seed, method)
    for line in report_lines(summary, out, time.time() - start):
        click.echo(line)


def report_lines(s: dict, out: Path, seconds: float) -> list[str]:
    """What ``aaclip-demo`` prints: where everything went, the tiny model's figures, and what they are not."""
    ev, rt, cal = s["eval"], s["runtime"], s["calibration"]
    lines = [f"aaclip-demo ({s['method']}) finished in {seconds:.0f} s; outputs in {out}/",
             f"  checkpoint     {out / 'checkpoint'}",
             f"  metrics        {ev['metrics']}  (image AUROC {_change(ev['image_auroc'])}, "
             f"pixel AUROC {_change(ev['pixel_auroc'])})"]
    for p, e in s["export"].items():
        lines.append(f"  {p} graph     {e['artifact']}  (parity with PyTorch: "
                     f"{'ok' if e['parity_passed'] else 'FAILED'})")
    lines += [f"  calibration    threshold {cal['threshold']:.4g} ({cal['method']}, {cal['frames']} normal frames "
              "of a clean line recording)",
              f"  runtime        {rt['events']}: {rt['frames']} frames; alarms on {rt['defect_frames_flagged']} "
              f"defective frames and on {rt['clean_frames_flagged']} good frames ({rt['alarms']} alarm onsets)",
              f"  evidence       {rt['evidence']}  annotated video {rt['annotated_video']}",
              *held_out_lines(cal["held_out"]),
              f"  summary        {out / 'summary.json'}",
              f"These are the figures of a tiny random CLIP ({BACKBONE}, random weights, no pretraining) on synthetic "
              f"{CAMERA_CLASS}s, not AA-CLIP's accuracy: that needs the real ViT-L-14-336 weights and data sets "
              "(README, \"What the demo can and cannot show\")."]
    return lines


def held_out_lines(h: dict) -> list[str]:
    """The held-out rates in words a line manager reads."""
    return [f"  held-out test  at the calibrated threshold it catches {h['caught']} of {h['defective']} defective "
            f"{CAMERA_CLASS}s ({h['catch_rate']:.0%}) and raises a false alarm on {h['false_alarms']} of {h['good']} "
            f"good ones ({h['false_alarm_rate']:.0%}): test images that neither training nor calibration saw"]


def _change(auroc: dict) -> str:
    trained = f"{auroc['trained']:.3f}"
    return trained if auroc["untrained"] is None else f"{auroc['untrained']:.3f} untrained -> {trained} trained"


def main(args=None) -> None:
    cli.main(args=args)


if __name__ == "__main__":
    main()
