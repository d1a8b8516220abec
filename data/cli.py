"""aaclip-data: build, subsample and check JSON-lines record files (SPEC section 6).

Every records file this command writes stores image/mask paths relative to the file's own folder,
so it can be read later without --root.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import click
from aaclip.contract.cli import CONTEXT, FiniteFloat, Group, verbosity
from aaclip.contract.errors import UserError
from aaclip.data.layouts import SPLITS, btad_records, folder_layout, folder_records, mvtec_records, visa_records
from aaclip.data.records import (
    ANOMALOUS,
    NORMAL,
    Record,
    class_counts,
    masked_counts,
    read_records,
    rebase,
    write_records,
)
from aaclip.data.shots import sample_shots, split_records

log = logging.getLogger(__name__)


@click.group(cls=Group, context_settings=CONTEXT)
@verbosity
def main() -> None:
    """Build, split, subsample and check JSON-lines image record files.

    A records file holds one JSON object per image: image_path, label (0 normal / 1 anomalous),
    class_name, mask_path (an anomaly's ground-truth mask, optional: without one the image keeps its
    image-level label); paths are relative to a data root, by default the file's folder.
    Your own photos: aaclip-data folder ROOT (ROOT/good, ROOT/<defect>/); docs/own-data.md.
    """


def _write(records: list[Record], root: Path, out: Path) -> None:
    write_records(out, rebase(records, root, out.parent))
    _summary(records, out)


def _summary(records: list[Record], out: Path) -> None:
    counts = class_counts(records)
    n_anom = sum(a for _, a in counts.values())
    n_masked = sum(masked_counts(records).values())
    masks = "" if n_masked == n_anom else ", none with a mask" if n_masked == 0 else f", {n_masked} with masks"
    click.echo(f"wrote {out}: {len(records)} images ({len(records) - n_anom} normal, {n_anom} anomalous{masks}) "
               f"in {len(counts)} class{'' if len(counts) == 1 else 'es'}")


def _layout_command(name: str, build: Callable[[Path, str], list[Record]], title: str) -> None:
    @main.command(name=name, help=f"""Write the records of a {title} tree at ROOT.

    Output defaults to ROOT/<split>.jsonl; paths in it are relative to the output file's folder.""")
    @click.argument("root", type=click.Path(path_type=Path))
    @click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
                  help="Which images: train, test or both (all).")
    @click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Output .jsonl file [default: ROOT/<split>.jsonl].")
    @verbosity
    def command(root: Path, split: str, out: Path | None) -> None:
        records = build(root, split)
        _write(records, root, out if out is not None else root / f"{split}.jsonl")


_layout_command("mvtec", mvtec_records, "MVTec-AD (or MPDD) <class>/{train,test,ground_truth}")
_layout_command("visa", visa_records, "VisA (split_csv/1cls.csv)")
_layout_command("btad", btad_records, "BTAD <class>/{train,test,ground_truth} (ok/ko)")


_LABEL_CHOICES = {"both": None, "normal": NORMAL, "anomalous": ANOMALOUS}


def _default_class(folders: list[Path]) -> str:
    name = Path(os.path.commonpath([str(f.resolve()) for f in folders])).name if folders else ""
    return name or "part"


@main.command()
@click.argument("root", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--good", "good", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder of good (normal) images, searched recursively; repeatable.")
@click.option("--bad", "bad", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder of defective images (one defect kind each, or all together); repeatable.")
@click.option("--masks", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of defect masks, optional: <defect>/<stem>_mask.png or <stem>.png (any image type) "
                   "[default with ROOT: ROOT/ground_truth or ROOT/masks when present].")
@click.option("--class", "class_name", metavar="NAME", default=None,
              help="Class name of the images; also the object the prompts name [default: the folder's name].")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .jsonl [default: ROOT/records.jsonl, or records.jsonl in the folders' common parent].")
@verbosity
def folder(root: Path | None, good: tuple[Path, ...], bad: tuple[Path, ...], masks: Path | None,
           class_name: str | None, out: Path | None) -> None:
    """Write the records of your own photos: ROOT/good/ and ROOT/<defect>/ folders, or --good DIR --bad DIR.

    \b
    aaclip-data folder photos/                    # photos/good, photos/scratch, photos/dent, ...
    aaclip-data folder --good ok/ --bad nok/ --class bracket --out bracket.jsonl

    Defective images need no masks: they carry an image-level label (label 1). Masks, where you have
    them, add pixel-level training and pixel metrics for those images.
    """
    if root is not None and (good or bad):
        raise UserError("give either ROOT (with ROOT/good and ROOT/<defect>/ folders) or --good/--bad, not both")
    if root is not None:
        good_dirs, bad_dirs, found_masks = folder_layout(root)
        masks = masks if masks is not None else found_masks
        base = root
    else:
        if not good and not bad:
            raise UserError("give ROOT (with ROOT/good and ROOT/<defect>/ folders) or --good DIR and --bad DIR")
        good_dirs, bad_dirs = list(good), list(bad)
        base = Path(os.path.commonpath([str(f.resolve()) for f in good_dirs + bad_dirs]))
    name = class_name or _default_class([root] if root is not None else good_dirs + bad_dirs)
    if class_name is None:
        log.info("class name %r (the folder's name; --class NAME chooses another)", name)
    out = out if out is not None else base / "records.jsonl"
    records = folder_records(good_dirs, bad_dirs, name, out.parent, masks)
    _write(records, out.parent, out)


@main.command()
@click.argument("records_file", metavar="IN", type=click.Path(path_type=Path))
@click.option("--test-fraction", type=FiniteFloat(min=0.0, max=1.0, min_open=True), default=0.3,
              show_default=True, help="Share of each class's normal and of its anomalous images put in the test set.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same split).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root of IN [default: IN's folder].")
@click.option("--train", "train_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Training records [default: train.jsonl beside IN].")
@click.option("--test", "test_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Test records [default: test.jsonl beside IN].")
@verbosity
def split(records_file: Path, test_fraction: float, seed: int, root: Path | None, train_out: Path | None,
          test_out: Path | None) -> None:
    """Split IN into training and test records, per class and label, deterministic for a seed."""
    root = root if root is not None else records_file.parent
    train_out = train_out if train_out is not None else records_file.parent / "train.jsonl"
    test_out = test_out if test_out is not None else records_file.parent / "test.jsonl"
    targets = [train_out.resolve(), test_out.resolve()]
    if records_file.resolve() in targets or targets[0] == targets[1]:
        raise UserError(f"the outputs {train_out} and {test_out} must differ from each other and from IN; "
                        "choose --train FILE --test FILE")
    train, test = split_records(read_records(records_file, root=root), test_fraction, seed)
    _write(train, root, train_out)
    _write(test, root, test_out)


@main.command()
@click.argument("records_file", metavar="IN", type=click.Path(path_type=Path))
@click.option("--k", "k", type=click.IntRange(min=1), required=True, help="Images per class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same shots).")
@click.option("--label", type=click.Choice(list(_LABEL_CHOICES)), default="both", show_default=True,
              help="Draw from normal images, anomalous images, or both (ceil(k/2) anomalous, rest normal).")
@click.option("--allow-fewer", is_flag=True, help="Take all images of a class that has fewer than k.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root of IN [default: IN's folder].")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .jsonl [default: <IN folder>/<IN stem>_<k>shot_seed<seed>.jsonl].")
@verbosity
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
@verbosity
def check(records_file: Path, root: Path | None, no_files: bool) -> None:
    """Validate FILE (format and files on disk) and print per-class counts.

    "masked" counts the anomalous images with a ground-truth mask; the others carry image-level labels
    only (training skips their pixel losses, evaluation their pixel metrics).
    """
    records = read_records(records_file, root=root, check_files=not no_files)
    counts = class_counts(records)
    masked = masked_counts(records)
    width = max(len("class"), *(len(c) for c in counts))
    click.echo(f"{'class':<{width}}  normal  anomalous  masked  total")
    for name, (n, a) in counts.items():
        click.echo(f"{name:<{width}}  {n:>6}  {a:>9}  {masked[name]:>6}  {n + a:>5}")
    n_all = sum(n for n, _ in counts.values())
    a_all = sum(a for _, a in counts.values())
    click.echo(f"{'total':<{width}}  {n_all:>6}  {a_all:>9}  {sum(masked.values()):>6}  {n_all + a_all:>5}")
    if a_all > sum(masked.values()):
        click.echo(f"{a_all - sum(masked.values())} anomalous images have no mask: image-level labels "
                   "(pixel losses and pixel metrics skip them)")


@main.command()
@click.argument("reviews_file", metavar="REVIEWS", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .jsonl; the frames go into <out stem>-images/ beside it.")
@verbosity
def reviews(reviews_file: Path, out: Path) -> None:
    """Turn the frames operators reviewed on the line view (aaclip-runtime --reviews) into records.

    Real and missed defects become label 1, false alarms label 0, with the class the camera inspects; each
    frame (the left half of its evidence image) is written as a PNG. Reviews whose evidence is gone, frames
    duplicating an earlier one, replaced and undone verdicts are listed, not dropped silently.
    """
    from aaclip.data.reviews_records import review_records

    result = review_records(reviews_file, out)
    for line in result.notes():
        click.echo(line)
    _summary(result.records, out)


@main.command()
@click.argument("out_dir", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--size", type=click.IntRange(min=8), default=128, show_default=True, help="Image side in pixels.")
@click.option("--classes", default=None, help="Comma-separated class names [default: the generator's own].")
@click.option("--train-normal", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--train-anomalous", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--test-normal", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--test-anomalous", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--paired", is_flag=True,
              help="Draw each defect on a copy of a normal image of the same split (only the defect differs).")
@verbosity
def synth(out_dir: Path, seed: int, size: int, classes: str | None, train_normal: int, train_anomalous: int,
          test_normal: int, test_anomalous: int, paired: bool) -> None:
    """Generate a small synthetic anomaly dataset in OUT (train.jsonl, test.jsonl, images, masks)."""
    from aaclip.data.synth import generate_dataset  # lazy: only this command needs it

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
        paired=paired,
    )
    for split, path in paths.items():
        click.echo(f"{split}: {path}")


if __name__ == "__main__":
    main()
