"""`aaclip-eval`: SPEC section 7 metrics of a checkpoint (any model family) on a JSON-lines test set."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from aaclip.contract.cli import Command, verbosity
from aaclip.contract.files import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def pixel_notes(report: dict) -> list[str]:
    """One line per class whose pixel metrics were not computed, or computed on part of its images."""
    lines = []
    for name, entry in report.items():
        note = entry.get("pixel_metrics") if isinstance(entry, dict) else None
        if note:
            lines.append(f"{name}: pixel metrics {note}")
    return lines


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(path_type=Path), help="Checkpoint directory (aaclip-train --out).")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Test JSON-lines.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Data root (default: the file's folder).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), help="Output folder (default: CKPT/eval).")
@click.option("--clip-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CLIP weights file, if it moved since training.")
@click.option("--method", metavar="NAME",
              help="Model family the checkpoint must be (it is read from the checkpoint; this only checks it).")
@click.option("--overlays", is_flag=True, help="Also save heat-map overlays of every test image.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per inference call.")
@click.option("--device", default="auto", show_default=True)
@verbosity
def main(ckpt, data, root, out, clip_weights, method, overlays, batch_size, device):
    """Per-class pixel AUROC/AP/F1-max, AUPRO, image AUROC/AP/F1-max and their mean -> metrics.json/.md.

    Image metrics use every image; pixel metrics use the images with known pixels (normal images and
    anomalies with masks) and are "not computed" for a class whose anomalies have no masks (image-level
    labels, e.g. from aaclip-data folder). Image scores use the paper's test-set min-max normalization
    (docs/method-choices.md, "Evaluation normalization"). Your own photos: docs/own-data.md.
    """
    from aaclip.contract.metrics import markdown_table

    from aaclip.train.checkpoint import checkpoint_config, load_checkpoint
    from aaclip.train.evaluate import evaluate, save_overlays
    from aaclip.train.families import check_method
    from aaclip.data.records import read_records
    from aaclip.train.common.driver import pick_device

    check_method(checkpoint_config(ckpt).method, method, f"checkpoint {ckpt}")
    records = read_records(data, root=root)
    root = root or data.parent
    out = out or Path(ckpt) / "eval"
    model = load_checkpoint(ckpt, clip_weights=clip_weights)
    report, preds = evaluate(model, records, root, batch_size, pick_device(device))
    atomic_write_json(out / "metrics.json", report)
    table = markdown_table(report)
    atomic_write_text(out / "metrics.md", "\n".join([table, *pixel_notes(report)]) + "\n")
    if overlays:
        n = save_overlays(preds, root, out / "overlays", model.config.image_size)
        log.info("wrote %d overlays to %s", n, out / "overlays")
    click.echo(table)
    for line in pixel_notes(report):
        click.echo(line)
    click.echo(f"metrics: {out / 'metrics.json'}")
    mean = report.get("mean", {})
    log.debug(json.dumps(mean))


if __name__ == "__main__":
    main()
