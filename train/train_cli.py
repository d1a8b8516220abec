"""`aaclip-train`: train a model family (default AA-CLIP), write the checkpoint of an untrained or
training-free one (`init`), or import official checkpoints (`import-official`).

Every subcommand takes ``--method NAME`` (default ``aa-clip``) and dispatches through the model-family
registry (``aaclip.train.families``); ``aaclip-train methods`` lists the registered families.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Optional

import click
from aaclip.contract.cli import CONTEXT, DefaultGroup, verbosity
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import DEFAULT_METHOD
from aaclip.train.cli_common import parse_object_names

log = logging.getLogger(__name__)

COMMON_CONFIG_FIELDS = ("method", "backbone", "image_size", "domain", "classes", "format_version")
# AA-CLIP's own `fit` flags -> fields of its TrainOptions (other families take --option KEY=VALUE).
AACLIP_FLAGS = {"stage": "stages", "epochs1": "stage1_epochs", "epochs2": "stage2_epochs", "batch1": "stage1_batch",
                "batch2": "stage2_batch", "lr1": "stage1_lr", "lr2": "stage2_lr", "stage1_levels": "stage1_levels",
                "vv_mode": "vv_mode"}
STAGES = {"1": (1,), "2": (2,), "both": (1, 2)}


def _method_option(f):
    return click.option("--method", default=DEFAULT_METHOD, show_default=True, metavar="NAME",
                        help="Model family (`aaclip-train methods` lists the registered ones).")(f)


def _backbone_options(f):
    from aaclip.train.common.config import ACTIVATIONS, DEFAULT_IMAGE_SIZE, POS_EMBED_RESIZE, TINY_BACKBONE, TINY_IMAGE_SIZE

    f = click.option("--backbone", default="ViT-L-14-336", show_default=True,
                     help="OpenCLIP model name: ViT-L-14-336 (AA-CLIP's; 518 px), ViT-B-16, ViT-L-14, ... "
                          "(`aaclip-train backbones` lists all with their pretrained tags), or aaclip-tiny "
                          "(4 blocks, width 64, at 64 px; with --random-init: a toy for tests and demos, trains "
                          "in seconds on a CPU).")(f)
    f = click.option("--clip-weights", type=click.Path(dir_okay=False, path_type=Path),
                     help="Local CLIP checkpoint: safetensors, a state dict, or OpenAI's TorchScript .pt "
                          "(read without running its code).")(f)
    f = click.option("--pretrained", help="OpenCLIP pretrained tag instead of a file, e.g. 'openai' (needs network).")(f)
    f = click.option("--random-init", type=int, metavar="SEED",
                     help="Random CLIP weights (tests and demos only: the model learns nothing transferable).")(f)
    f = click.option("--activation", type=click.Choice(ACTIVATIONS),
                     help="GELU flavour of both towers [default: the family's official one; aa-clip: gelu; "
                          "res2clip: quickgelu; clip-ad: quickgelu for OpenAI weights at their native size, "
                          "else gelu].")(f)
    f = click.option("--pos-embed-resize", type=click.Choice(list(POS_EMBED_RESIZE)),
                     help="Position-embedding resize to --image-size [default: the family's; aa-clip: "
                          "bicubic-antialias].")(f)
    f = click.option("--image-size", type=click.IntRange(min=8), default=None,
                     help=f"Training/inference resolution [default: {DEFAULT_IMAGE_SIZE}, AA-CLIP's; "
                          f"{TINY_IMAGE_SIZE} for {TINY_BACKBONE}].")(f)
    return f


def _set_option(f):
    return click.option("--set", "config_fields", multiple=True, metavar="KEY=VALUE",
                        help="A family-specific field of the new checkpoint's config, value in JSON "
                             "(aa-clip: relu=true, levels=[6,12,18,24], adapter_lambda=0.1, ...).")(f)


def _backbone_config(backbone, clip_weights, pretrained, random_init, activation, pos_embed_resize):
    from aaclip.contract.files import sha256_file

    from aaclip.train.common.config import BackboneConfig

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
        pos_embed_resize=pos_embed_resize,
    )


def parse_pairs(values, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` options -> {key: JSON value (plain strings stay strings)}."""
    out: dict[str, Any] = {}
    for text in values:
        key, sep, raw = str(text).partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} expects KEY=VALUE, got {text!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def new_config(family, backbone, image_size: Optional[int], domain: str, classes: dict[str, str],
               fields: dict[str, Any]):
    """A new config of ``family`` with the common fields and family-specific ``fields`` (checked by name);
    ``image_size`` None: the backbone's default (``config.default_image_size``)."""
    allowed = [f.name for f in dataclasses.fields(family.config_class) if f.name not in COMMON_CONFIG_FIELDS]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise UserError(f"--set {unknown[0]}: {family.name} configs have no such field; its fields: "
                        f"{', '.join(allowed) or 'none'}")
    from aaclip.train.common.config import default_image_size

    size = image_size if image_size is not None else default_image_size(backbone.name)
    return family.config_class(backbone=backbone, image_size=size, domain=domain, classes=classes, **fields)


def make_options(family, values: dict[str, Any], explicit: dict[str, Any]):
    """The family's training options: ``explicit`` (given by the user; every key must be an option of the
    family) over ``values`` (command defaults, used where the family has such an option)."""
    names = {f.name: f for f in dataclasses.fields(family.train_options)}
    unknown = sorted(set(explicit) - set(names))
    if unknown:
        raise UserError(f"{family.name} training has no option {unknown[0]!r}; its options: {', '.join(names)}")
    kwargs = {k: v for k, v in {**values, **explicit}.items() if k in names}
    for key, value in kwargs.items():  # JSON lists for tuple-valued options
        if isinstance(value, list) and isinstance(_default(names[key]), tuple):
            kwargs[key] = tuple(value)
    try:
        return family.train_options(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{family.name} training options: {exc}") from exc


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _explicit(ctx: click.Context, names) -> list[str]:
    return [n for n in names if ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT)]


@click.group(cls=DefaultGroup, default="fit", context_settings=CONTEXT)
@verbosity
def main():
    """Train a model family (default command `fit`; default method aa-clip), write an untrained or
    training-free checkpoint (`init`), or import official checkpoints.

    \b
    aaclip-train --data train.jsonl --clip-weights ViT-L-14-336.safetensors --out runs/visa
    aaclip-train init --method aa-clip --clip-weights ViT-L-14-336.safetensors --classes bottle,cable --out runs/zero
    aaclip-train import-official AA-CLIP/ckpt/visa_full --pretrained openai --out runs/official
    aaclip-train --data train.jsonl --backbone aaclip-tiny --random-init 0 --out runs/toy
    aaclip-train methods
    aaclip-train backbones

    Progress: a bar per epoch with steps/s and an ETA (log lines with both when not on a terminal).
    Your own photos: docs/own-data.md.
    """


@main.command("fit")
@_method_option
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training JSON-lines (see `aaclip-data`).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Data root (default: the file's folder).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoint directory; re-running with the same directory resumes.")
@_backbone_options
@click.option("--domain", type=click.Choice(["industrial", "medical"]), default="industrial", show_default=True)
@click.option("--object-name", "object_names", multiple=True, metavar="CLASS=NAME",
              help="Prompt name of a class (repeatable); default: built-in tables, else the class name.")
@_set_option
@click.option("--option", "train_options", multiple=True, metavar="KEY=VALUE",
              help="A training option of the family (a field of its options class), value in JSON.")
@click.option("--stage", type=click.Choice(list(STAGES)), help="(aa-clip) Stage 1, 2 or both [default: both].")
@click.option("--epochs1", type=int, help="(aa-clip) Stage-1 epochs [default: 5].")
@click.option("--epochs2", type=int, help="(aa-clip) Stage-2 epochs [default: 20].")
@click.option("--batch1", type=int, help="(aa-clip) Stage-1 batch [default: 16].")
@click.option("--batch2", type=int, help="(aa-clip) Stage-2 batch [default: 2].")
@click.option("--lr1", type=float, help="(aa-clip) Stage-1 learning rate [default: 1e-5].")
@click.option("--lr2", type=float, help="(aa-clip) Stage-2 learning rate [default: 5e-4].")
@click.option("--stage1-levels", type=click.Choice(["last", "all"]),
              help="(aa-clip) Levels back-propagated in stage 1: 'last' as the reference code does [default], "
                   "'all' as the paper says.")
@click.option("--vv-mode", type=click.Choice(["reference", "tokens"]),
              help="(aa-clip) Stage-1 V-V attention across the batch (reference code) [default] or over tokens "
                   "(paper intent).")
@click.option("--max-steps", type=int, help="Cap on steps per epoch (quick runs).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--amp", is_flag=True, help="bf16 autocast on CUDA.")
@click.option("--no-resume", is_flag=True, help="Refuse to continue a run found in --out.")
@verbosity
@click.pass_context
def fit(ctx, method, data, root, out, backbone, clip_weights, pretrained, random_init, activation, pos_embed_resize,
        image_size, domain, object_names, config_fields, train_options, stage, epochs1, epochs2, batch1, batch2, lr1,
        lr2, stage1_levels, vv_mode, max_steps, seed, device, amp, no_resume):
    """Train the family's weights, writing the checkpoint after every epoch (AA-CLIP: stage 1 text adapters,
    stage 2 image adapters)."""
    import torch

    from aaclip.train.checkpoint import build_model, check_same_run, load_checkpoint

    from aaclip.train.common.checkpoint_files import STATE_FILE, read_train_state
    from aaclip.train.common.config import CONFIG_FILE
    from aaclip.train.families import check_method, get_family
    from aaclip.data.records import class_names, read_records

    family = get_family(method)
    if not family.trainable:
        raise UserError(f"method {method!r} is training-free: write its checkpoint with `aaclip-train init --method "
                        f"{method} --clip-weights FILE --classes ... --out DIR`")
    params = ctx.params
    explicit = {AACLIP_FLAGS[n]: params[n] for n in _explicit(ctx, AACLIP_FLAGS)}
    if "stages" in explicit:
        explicit["stages"] = STAGES[explicit["stages"]]
    explicit.update(parse_pairs(train_options, "--option"))
    explicit.update({k: params[n] for n, k in (("amp", "amp"), ("max_steps", "max_steps_per_epoch"))
                     if n in _explicit(ctx, ("amp", "max_steps"))})
    options = make_options(family, {"seed": seed, "device": device}, explicit)
    fields = parse_pairs(config_fields, "--set")

    records = read_records(data, root=root)
    root = root or data.parent
    continuing = (out / STATE_FILE).exists() or (stage == "2" and (out / CONFIG_FILE).exists())
    if (out / STATE_FILE).exists() and no_resume:
        raise UserError(f"{out} already holds a training run: choose another --out or drop --no-resume")
    if continuing:
        if fields:
            raise UserError(f"--set applies to a new checkpoint; {out} already holds one")
        read_train_state(out)  # a damaged resume state is one clear error, before anything loads
        model = load_checkpoint(out)  # resume, or stage 2 on top of a stage-1 checkpoint in the same directory
        check_method(model.config.method, method, f"the checkpoint in {out}")
        log.info("continuing the run in %s", out)
    else:
        if stage == "2":
            raise UserError(f"--stage 2 needs a stage-1 checkpoint in {out}: run --stage 1 first")
        names = parse_object_names(object_names)
        unknown = sorted(set(names) - set(class_names(records)))
        if unknown:
            raise UserError(f"--object-name for classes not in the data: {unknown}")
        config = new_config(
            family, _backbone_config(backbone, clip_weights, pretrained, random_init, activation, pos_embed_resize),
            image_size, domain, {c: family.object_name(c, names) for c in class_names(records)}, fields)
        torch.manual_seed(seed)  # the trainable weights' initialization: same seed, same run
        model = build_model(config)
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused start leaves no empty folder behind
    check_same_run(out, run_identity(data, root, model.config, seed))
    family.trainer(model, records, root, out, options).run()
    click.echo(f"checkpoint: {out}")


def run_identity(data: Path, root: Path, config, seed: int) -> dict:
    """What makes a training run this run: the data (content), the model config, the seed. A run continued
    with more epochs is the same run; one on other data or another model is not."""
    from aaclip.contract.files import sha256_file

    described = config.to_dict()
    described["backbone"] = {k: v for k, v in described["backbone"].items() if k != "weights"}  # paths may move
    return {"data_sha256": sha256_file(data), "root": str(Path(root).resolve()), "config": described, "seed": seed}


def _reference_options(f):
    f = click.option("--reference-images", type=click.Path(file_okay=False, path_type=Path),
                     help="(res2clip) Folder of normal images, one sub-folder per class (DIR/<class>/...).")(f)
    f = click.option("--reference-data", type=click.Path(dir_okay=False, path_type=Path),
                     help="(res2clip) JSON-lines records whose label-0 images are the references.")(f)
    f = click.option("--reference-seed", type=int, default=0, show_default=True,  # references.REFERENCE_SEED
                     help="(res2clip) Seed of the choice of references among a class's normal images.")(f)
    return f


@main.command("init")
@_method_option
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Checkpoint directory.")
@_backbone_options
@click.option("--classes", required=True, help="Comma-separated class names the checkpoint serves.")
@click.option("--object-name", "object_names", multiple=True, metavar="CLASS=NAME",
              help="Prompt name of a class (repeatable); default: built-in tables, else the class name.")
@click.option("--domain", type=click.Choice(["industrial", "medical"]), default="industrial", show_default=True)
@_set_option
@_reference_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the trainable weights' initialization.")
@click.option("--force", is_flag=True, help="Overwrite a checkpoint already in --out.")
@verbosity
def init(method, out, backbone, clip_weights, pretrained, random_init, activation, pos_embed_resize, image_size,
         classes, object_names, domain, config_fields, reference_images, reference_data, reference_seed, seed, force):
    """Write the checkpoint folder (config, weights) of a training-free family, or of a trainable one
    before training (zero-shot use, tests): what export, eval, calibration and benchmarks take.
    Families with per-class references (res2clip) build them from --reference-images or --reference-data
    (--set shots=K normal images per class, default 1)."""
    from aaclip.train.checkpoint import init_checkpoint
    from aaclip.train.common.checkpoint_files import STATE_FILE
    from aaclip.train.common.config import CONFIG_FILE
    from aaclip.train.families import get_family

    family = get_family(method)
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        raise UserError("--classes is empty: give class names separated by commas")
    prompts = parse_object_names(object_names)
    unknown = sorted(set(prompts) - set(names))
    if unknown:
        raise UserError(f"--object-name for classes not in --classes: {unknown}")
    if ((out / CONFIG_FILE).exists() or (out / STATE_FILE).exists()) and not force:
        raise UserError(f"{out} already holds a checkpoint: choose another --out or add --force")
    config = new_config(
        family, _backbone_config(backbone, clip_weights, pretrained, random_init, activation, pos_embed_resize),
        image_size, domain, {c: family.object_name(c, prompts) for c in names}, parse_pairs(config_fields, "--set"))
    references = None
    if family.references:
        from aaclip.data.references import reference_paths

        references = reference_paths(names, config.shots, reference_seed, reference_images, reference_data)
    elif reference_images is not None or reference_data is not None:
        raise UserError(f"method {method!r} keeps no reference images: drop --reference-images/--reference-data")
    init_checkpoint(out, config, seed, references)
    if references:
        _echo_references(out)
    click.echo(f"checkpoint: {out}")


def _echo_references(ckpt: Path) -> None:
    from aaclip.train.checkpoint import checkpoint_config
    from aaclip.train.families.res2clip.bank import bank_bytes, describe

    config = checkpoint_config(ckpt)
    for line in describe({c: bank_bytes(config) for c in config.classes}, config.shots):
        click.echo(line)


@main.command("references")
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_reference_options
@click.option("--classes", help="Comma-separated classes to (re)build [default: every class found].")
@verbosity
def references_cmd(ckpt, reference_images, reference_data, reference_seed, classes):
    """Build the per-class reference banks of a checkpoint that keeps them (res2clip, res2clip-ft): new
    classes are added, existing ones rebuilt from the new images; the checkpoint is rewritten in place."""
    from aaclip.train.checkpoint import load_checkpoint
    from aaclip.train.common.checkpoint_files import save_checkpoint
    from aaclip.train.families import get_family
    from aaclip.data.references import reference_paths
    from aaclip.train.families.res2clip.bank import add_references

    model = load_checkpoint(ckpt)
    family = get_family(model.config.method)
    if not family.references:
        raise UserError(f"{ckpt} holds a {model.config.method} model, which keeps no reference images")
    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    paths = reference_paths(wanted, model.config.shots, reference_seed, reference_images, reference_data)
    add_references(model, paths, {c: family.object_name(c) for c in paths})
    save_checkpoint(model, ckpt)
    _echo_references(ckpt)
    click.echo(f"checkpoint: {ckpt}")


@main.command("import-official")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@_method_option
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@_backbone_options
@click.option("--epoch", type=int, help="(aa-clip) Which image_adapter_<epoch>.pth [default: the latest].")
@click.option("--option", "import_options", multiple=True, metavar="KEY=VALUE",
              help="An option of the family's importer, value in JSON.")
@click.option("--domain", type=click.Choice(["industrial", "medical"]), default="industrial", show_default=True)
@click.option("--classes", help="Comma-separated class names to record (object names from the built-in tables).")
@verbosity
def import_official(src, method, out, backbone, clip_weights, pretrained, random_init, activation, pos_embed_resize,
                    image_size, epoch, import_options, domain, classes):
    """Convert a method's official checkpoint (AA-CLIP: text_adapter.pth + image_adapter_<epoch>.pth of
    the reference code) into a checkpoint folder."""
    from aaclip.train.families import get_family

    family = get_family(method)
    if family.import_official is None:
        raise UserError(f"method {method!r} has no importer of official checkpoints")
    options = parse_pairs(import_options, "--option")
    if epoch is not None:
        options["epoch"] = epoch
    config = new_config(
        family, _backbone_config(backbone, clip_weights, pretrained, random_init, activation, pos_embed_resize),
        image_size, domain, {c: family.object_name(c) for c in (classes.split(",") if classes else [])}, {})
    try:
        inspect.signature(family.import_official).bind(src, out, config, **options)
    except TypeError as exc:
        raise UserError(f"{method} importer: {exc} (options given: {', '.join(options) or 'none'})") from exc
    family.import_official(src, out, config, **options)
    click.echo(f"checkpoint: {out}")


@main.command("methods")
@verbosity
def methods():
    """List the registered model families."""
    from aaclip.train.families import family_names, get_family

    for name in family_names():
        f = get_family(name)
        kind = "trainable" if f.trainable else "training-free"
        extra = ", import-official" if f.import_official else ""
        click.echo(f"{name}\t{kind}{extra}\t{f.summary}")


@main.command("backbones")
@verbosity
def backbones():
    """List the OpenCLIP model names --backbone accepts, with their pretrained tags (--pretrained)."""
    import open_clip

    from aaclip.train.common import backbone as _  # noqa: F401 - registers aaclip-tiny

    tags: dict[str, list[str]] = {}
    for name, tag in open_clip.list_pretrained():
        tags.setdefault(name, []).append(tag)
    for name in open_clip.list_models():
        note = "random weights only: tests and demos" if name == "aaclip-tiny" else ", ".join(tags.get(name, [])) or "-"
        click.echo(f"{name}\t{note}")


if __name__ == "__main__":
    main()
