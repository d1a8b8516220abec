"""`aaclip-train`: two-stage AA-CLIP training, and import of reference AA-CLIP checkpoints."""
from __future__ import annotations

import logging
from pathlib import Path

import click
from aaclip.contract.cli import DefaultGroup, verbosity
from aaclip.contract.errors import UserError
from aaclip.train.cli_common import parse_object_names

log = logging.getLogger(__name__)


def _backbone_options(f):
    f = click.option("--backbone", default="ViT-L-14-336", show_default=True, help="OpenCLIP model name.")(f)
    f = click.option("--clip-weights", type=click.Path(dir_okay=False, path_type=Path),
                     help="Local CLIP checkpoint (safetensors or state dict).")(f)
    f = click.option("--pretrained", help="OpenCLIP pretrained tag instead of a file, e.g. 'openai' (needs network).")(f)
    f = click.option("--random-init", type=int, metavar="SEED",
                     help="Random CLIP weights (tests and demos only: the model learns nothing transferable).")(f)
    f = click.option("--activation", type=click.Choice(["gelu", "quickgelu"]), default="gelu", show_default=True,
                     help="GELU flavour of both towers; 'gelu' reproduces the paper (SPEC section 1).")(f)
    f = click.option("--image-size", type=int, default=518, show_default=True, help="Training/inference resolution.")(f)
    return f


def _backbone_config(backbone, clip_weights, pretrained, random_init, activation):
    from aaclip.contract.files import sha256_file

    from .config import BackboneConfig

    given = [x is not None for x in (clip_weights, pretrained, random_init)]
    if sum(given) != 1:
        raise UserError("give exactly one of --clip-weights FILE, --pretrained TAG, --random-init SEED")
    if clip_weights is not None and not clip_weights.is_file():
        raise UserError(f"CLIP weights file not found: {clip_weights}")
    return BackboneConfig(
        name=backbone,
        pretrained=pretrained,
        weights=str(clip_weights.resolve()) if clip_weights else None,
        weights_sha256=sha256_file(clip_weights) if clip_weights else None,
        activation=activation,
        init_seed=random_init,
    )


@click.group(cls=DefaultGroup, default="fit",
             context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Train AA-CLIP adapters (default command `fit`) or import reference checkpoints.

    \b
    aaclip-train --data train.jsonl --clip-weights ViT-L-14-336.safetensors --out runs/visa
    aaclip-train import-official AA-CLIP/ckpt/visa_full --pretrained openai --out runs/official
    """


@main.command("fit")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training JSON-lines (see `aaclip-data`).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Data root (default: the file's folder).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoint directory; re-running with the same directory resumes.")
@_backbone_options
@click.option("--stage", type=click.Choice(["1", "2", "both"]), default="both", show_default=True)
@click.option("--domain", type=click.Choice(["industrial", "medical"]), default="industrial", show_default=True)
@click.option("--object-name", "object_names", multiple=True, metavar="CLASS=NAME",
              help="Prompt name of a class (repeatable); default: built-in tables, else the class name.")
@click.option("--epochs1", type=int, default=5, show_default=True, help="Stage-1 epochs.")
@click.option("--epochs2", type=int, default=20, show_default=True, help="Stage-2 epochs.")
@click.option("--batch1", type=int, default=16, show_default=True)
@click.option("--batch2", type=int, default=2, show_default=True)
@click.option("--lr1", type=float, default=1e-5, show_default=True)
@click.option("--lr2", type=float, default=5e-4, show_default=True)
@click.option("--stage1-levels", type=click.Choice(["last", "all"]), default="last", show_default=True,
              help="Levels back-propagated in stage 1: 'last' as the reference code does, 'all' as the paper says.")
@click.option("--vv-mode", type=click.Choice(["reference", "tokens"]), default="reference", show_default=True,
              help="Stage-1 V-V attention across the batch (reference code) or over tokens (paper intent).")
@click.option("--max-steps", type=int, help="Cap on steps per epoch (quick runs).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--amp", is_flag=True, help="bf16 autocast on CUDA.")
@click.option("--no-resume", is_flag=True, help="Refuse to continue a run found in --out.")
@verbosity
def fit(data, root, out, backbone, clip_weights, pretrained, random_init, activation, image_size, stage, domain,
        object_names, epochs1, epochs2, batch1, batch2, lr1, lr2, stage1_levels, vv_mode, max_steps, seed, device,
        amp, no_resume):
    """Run stage 1 (text adapters) and stage 2 (image adapters), writing checkpoints after every epoch."""
    from .checkpoint import build_model, load_checkpoint
    from .config import CONFIG_FILE, AAClipConfig
    from .records import class_names, read_records
    from .trainer import STATE_FILE, Trainer, TrainOptions

    records = read_records(data, root=root)
    root = root or data.parent
    out.mkdir(parents=True, exist_ok=True)
    if (out / STATE_FILE).exists():
        if no_resume:
            raise UserError(f"{out} already holds a training run: choose another --out or drop --no-resume")
        model = load_checkpoint(out)
        log.info("continuing the run in %s", out)
    elif stage == "2" and (out / CONFIG_FILE).exists():
        model = load_checkpoint(out)  # stage 2 on top of a stage-1 checkpoint in the same directory
    else:
        if stage == "2":
            raise UserError(f"--stage 2 needs a stage-1 checkpoint in {out}: run --stage 1 first")
        names = parse_object_names(object_names)
        unknown = sorted(set(names) - set(class_names(records)))
        if unknown:
            raise UserError(f"--object-name for classes not in the data: {unknown}")
        from .object_names import object_name

        config = AAClipConfig(
            backbone=_backbone_config(backbone, clip_weights, pretrained, random_init, activation),
            image_size=image_size, domain=domain,
            classes={c: object_name(c, names) for c in class_names(records)},
        )
        model = build_model(config)
    options = TrainOptions(
        stage1_epochs=epochs1, stage2_epochs=epochs2, stage1_batch=batch1, stage2_batch=batch2,
        stage1_lr=lr1, stage2_lr=lr2, stage1_levels=stage1_levels, vv_mode=vv_mode,
        stages=(1, 2) if stage == "both" else (int(stage),), seed=seed, device=device, amp=amp,
        max_steps_per_epoch=max_steps,
    )
    Trainer(model, records, root, out, options).run()
    click.echo(f"checkpoint: {out}")


@main.command("import-official")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@_backbone_options
@click.option("--epoch", type=int, help="Which image_adapter_<epoch>.pth (default: the latest).")
@click.option("--domain", type=click.Choice(["industrial", "medical"]), default="industrial", show_default=True)
@click.option("--classes", help="Comma-separated class names to record (object names from the built-in tables).")
@verbosity
def import_official(src, out, backbone, clip_weights, pretrained, random_init, activation, image_size, epoch,
                    domain, classes):
    """Convert text_adapter.pth + image_adapter_<epoch>.pth from the AA-CLIP reference code."""
    from .checkpoint import import_official as do_import
    from .config import AAClipConfig
    from .object_names import object_name

    config = AAClipConfig(
        backbone=_backbone_config(backbone, clip_weights, pretrained, random_init, activation),
        image_size=image_size, domain=domain,
        classes={c: object_name(c) for c in (classes.split(",") if classes else [])},
    )
    do_import(src, out, config, epoch)
    click.echo(f"checkpoint: {out}")


if __name__ == "__main__":
    main()
