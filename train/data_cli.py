"""aaclip-data: build, subsample and check JSON-lines record files (SPEC section 6).

Every records file this command writes stores image/mask paths relative to the file's own folder,
so it can be read later without --root.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import click
from aaclip.contract.cli import Group, setup_logging
from aaclip.contract.errors import UserError
from aaclip.train.layouts import SPLITS, btad_records, mvtec_records, visa_records
from aaclip.train.records import (
    ANOMALOUS,
    NORMAL,
    Record,
    class_counts,
    read_records,
    rebase,
    write_records,
)
from aaclip.train.shots import sample_shots

log = logging.getLogger(__name__)


@click.group(cls=Group)
@click.option("-v", "--verbose", count=True, help="More log output (debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """Build, subsample and check JSON-lines image record files.

    A records file holds one JSON object per image: image_path, label (0 normal / 1 anomalous),
    class_name, mask_path (anomalies only); paths are relative to a data root, by default the
    file's folder.
    """
    setup_logging(verbose, quiet)


def _write(records: list[Record], root: Path, out: Path) -> None:
    write_records(out, rebase(records, root, out.parent))
    counts = class_counts(records)
    n_anom = sum(a for _, a in counts.values())
    click.echo(f"wrote {out}: {len(records)} images ({len(records) - n_anom} normal, {n_anom} anomalous) "
               f"in {len(counts)} classes")


def _layout_command(name: str, build: Callable[[Path, str], list[Record]], title: str) -> None:
    @main.command(name=name, help=f"""Write the records of a {title} tree at ROOT.

    Output defaults to ROOT/<split>.jsonl; paths in it are relative to the output file's folder.""")
    @click.argument("root", type=click.Path(path_type=Path))
    @click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
                  help="Which images: train, test or both (all).")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Output .jsonl file [default: ROOT/<split>.jsonl].")
    def command(root: Path, split: str, out: Path | None) -> None:
        records = build(root, split)
        _write(records, root, out if out is not None else root / f"{split}.jsonl")


_layout_command("mvtec", mvtec_records, "MVTec-AD (or MPDD) <class>/{train,test,ground_truth}")
_layout_command("visa", visa_records, "VisA (split_csv/1cls.csv)")
_layout_command("btad", btad_records, "BTAD <class>/{train,test,ground_truth} (ok/ko)")


_LABEL_CHOICES = {"both": None, "normal": NORMAL, "anomalous": ANOMALOUS}


@main.command()
@click.argument("records_file", metavar="IN", type=click.Path(path_type=Path))
@click.option("--k", "k", type=click.IntRange(min=1), required=True, help="Images per class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same shots).")
@click.option("--label", type=click.Choice(list(_LABEL_CHOICES)), default="both", show_default=True,
              help="Draw from normal images, anomalous images, or both (ceil(k/2) anomalous, rest normal).")
@click.option("--allow-fewer", is_flag=True, help="Take all images of a class that has fewer than k.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root of IN [default: IN's folder].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .jsonl [default: <IN folder>/<IN stem>_<k>shot_seed<seed>.jsonl].")
def shots(records_file: Path, k: int, seed: int, label: str, allow_fewer: bool, root: Path | None,
          out: Path | None) -> None:
    """Write a k-shot subset of IN: k images per class, deterministic for a seed."""
    root = root if root is not None else records_file.parent
    records = read_records(records_file, root=root)
    chosen = sample_shots(records, k, seed, label=_LABEL_CHOICES[label], allow_fewer=allow_fewer)
    if out is None:
        out = records_file.parent / f"{records_file.stem}_{k}shot_seed{seed}.jsonl"
    _write(chosen, root, out)


@main.command()
@click.argument("records_file", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root of FILE [default: FILE's folder].")
@click.option("--no-files", is_flag=True, help="Check the format only, not that images and masks exist.")
def check(records_file: Path, root: Path | None, no_files: bool) -> None:
    """Validate FILE (format and files on disk) and print per-class counts."""
    records = read_records(records_file, root=root, check_files=not no_files)
    counts = class_counts(records)
    width = max(len("class"), *(len(c) for c in counts))
    click.echo(f"{'class':<{width}}  normal  anomalous  total")
    for name, (n, a) in counts.items():
        click.echo(f"{name:<{width}}  {n:>6}  {a:>9}  {n + a:>5}")
    n_all = sum(n for n, _ in counts.values())
    a_all = sum(a for _, a in counts.values())
    click.echo(f"{'total':<{width}}  {n_all:>6}  {a_all:>9}  {n_all + a_all:>5}")


@main.command()
@click.argument("out_dir", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--size", type=click.IntRange(min=8), default=128, show_default=True, help="Image side in pixels.")
@click.option("--classes", default=None, help="Comma-separated class names [default: the generator's own].")
@click.option("--train-normal", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--train-anomalous", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--test-normal", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--test-anomalous", type=click.IntRange(min=0), default=8, show_default=True)
def synth(out_dir: Path, seed: int, size: int, classes: str | None, train_normal: int, train_anomalous: int,
          test_normal: int, test_anomalous: int) -> None:
    """Generate a small synthetic anomaly dataset in OUT (train.jsonl, test.jsonl, images, masks)."""
    from aaclip.train.synth import generate_dataset  # lazy: only this command needs it

    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if classes is not None and not class_list:
        raise UserError(f"--classes {classes!r} names no class; pass e.g. --classes bottle,cable")
    paths = generate_dataset(
        out_dir,
        classes=class_list,
        image_size=size,
        n_train_normal=train_normal,
        n_train_anomalous=train_anomalous,
        n_test_normal=test_normal,
        n_test_anomalous=test_anomalous,
        seed=seed,
    )
    for split, path in paths.items():
        click.echo(f"{split}: {path}")


if __name__ == "__main__":
    main()
