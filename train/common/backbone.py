"""Build the frozen OpenCLIP backbone: model name -> config -> model, weights loaded as a separate step.

Weights come from an OpenCLIP pretrained tag (network, real users), a local checkpoint file
(safetensors, a state dict read with ``torch.load(weights_only=True)``, or OpenAI's TorchScript archive
read by ``torchscript_archive`` without executing it), or a seeded random
initialization (tests and the demo). The visual position embedding is resized to the configured
resolution by OpenCLIP's ``resize_pos_embed`` (class slot kept, align_corners=False) with the mode the
config's backbone records (``pos_embed_resize``): AA-CLIP's bicubic with antialias (SPEC section 1),
or another family's (Res2CLIP: bilinear). The activation (GELU or QuickGELU) is recorded there too.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import open_clip
import torch
from aaclip.contract.errors import UserError
from aaclip.contract.files import sha256_file
from open_clip.model import resize_pos_embed

from aaclip.train.common.config import BackboneConfig, ModelConfig

log = logging.getLogger(__name__)
_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # entries only OpenAI's files carry


def create_clip(backbone: BackboneConfig, image_size: int) -> torch.nn.Module:
    """Construct the CLIP model for ``backbone`` at ``image_size`` with random (or tag) weights."""
    if backbone.name not in open_clip.list_models():
        raise UserError(f"unknown OpenCLIP model {backbone.name!r}: see open_clip.list_models() for names")
    if backbone.activation == "gelu" and backbone.name.endswith("-quickgelu"):
        raise UserError(f"{backbone.name} is a QuickGELU config but activation 'gelu' was asked: drop '-quickgelu'")
    if backbone.init_seed is not None:
        torch.manual_seed(backbone.init_seed)
    # OpenCLIP warns on the root logger that no pretrained weights were loaded: expected here.
    logging.getLogger().addFilter(_quiet_random_init)
    try:
        model = _create(backbone, image_size)
    finally:
        logging.getLogger().removeFilter(_quiet_random_init)
    return model


def _quiet_random_init(record: logging.LogRecord) -> bool:
    return "No pretrained weights loaded" not in record.getMessage()


def _create(backbone: BackboneConfig, image_size: int) -> torch.nn.Module:
    quick = backbone.activation == "quickgelu"
    if backbone.pretrained is not None and backbone.resize_mode != ("bicubic", True):
        # OpenCLIP resizes a pretrained tag's position embedding bicubic+antialias: load the weights at
        # their native size and resize them with this backbone's mode instead.
        native = open_clip.create_model(backbone.name, pretrained=backbone.pretrained, force_quick_gelu=quick,
                                        device="cpu")
        model = open_clip.create_model(backbone.name, force_image_size=image_size, force_quick_gelu=quick,
                                       device="cpu")
        load_state(model, native.state_dict(), backbone, f"pretrained {backbone.pretrained}")
        return model
    return open_clip.create_model(
        backbone.name,
        pretrained=backbone.pretrained,
        force_image_size=image_size,
        force_quick_gelu=quick,
        device="cpu",
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read CLIP weights from a local file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CLIP weights file not found: {path} (pass --clip-weights with an existing file)")
    from .torchscript_archive import is_torchscript_archive, read_torchscript_tensors

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif is_torchscript_archive(path):  # OpenAI's released .pt files: tensors only, no code run
            state = read_torchscript_tensors(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as exc:  # corrupt or unsafe file: say which and how to fix
        raise UserError(
            f"cannot read CLIP weights {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]} "
            "(use a safetensors file, a plain state-dict checkpoint or OpenAI's TorchScript .pt archive)"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} holds no state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    for key in OPENAI_EXTRAS:  # OpenAI checkpoint extras
        state.pop(key, None)
    return state


def openai_weights(backbone: BackboneConfig) -> bool:
    """Whether ``backbone``'s weights are OpenAI's release (what decides the official loaders' QuickGELU):
    ``--pretrained openai``; a weights file that is OpenAI's TorchScript archive or whose safetensors
    header has OpenAI's extra entries; or any file for a model that only OpenAI released weights of
    (OpenCLIP lists no other tag, e.g. ViT-L-14-336). Other files count as not OpenAI's."""
    if backbone.pretrained is not None:
        return backbone.pretrained == "openai"
    if backbone.weights is None:
        return False
    if open_clip.list_pretrained_tags_by_model(backbone.name) == ["openai"]:
        return True
    path = Path(backbone.weights)
    if not path.is_file():
        return False
    from .torchscript_archive import is_torchscript_archive

    if is_torchscript_archive(path):
        return True
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return any(k in OPENAI_EXTRAS for k in f.keys())
        except Exception:  # unreadable: loading it reports the problem
            return False
    return False


def load_state(model: torch.nn.Module, state: dict, backbone: BackboneConfig, origin: str) -> None:
    """Load CLIP weights into ``model``, resizing the position embedding with the backbone's mode."""
    interpolation, antialias = backbone.resize_mode
    transient = {f"{name}.{b}" if name else b for name, module in model.named_modules()
                 for b in module._non_persistent_buffers_set}
    # TorchScript saves e.g. the causal mask; float16 files (OpenAI's) resize in float32, as the model holds them
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k not in transient}
    resize_pos_embed(state, model, interpolation=interpolation, antialias=antialias)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"CLIP weights {origin} do not fit the model: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); is --backbone the right model name?"
        )


def load_clip_weights(model: torch.nn.Module, path: Path, backbone: BackboneConfig) -> None:
    load_state(model, read_state_dict(path), backbone, str(path))


def resolve_weights(backbone: BackboneConfig, base_dir: Optional[Path]) -> Optional[Path]:
    if backbone.weights is None:
        return None
    path = Path(backbone.weights)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def build_clip(config: ModelConfig, base_dir: Optional[Path] = None, check_hash: bool = True):
    """The frozen CLIP model (eval mode, no gradients) and its tokenizer."""
    backbone = config.backbone
    if backbone.pretrained is None and backbone.weights is None and backbone.init_seed is None:
        raise UserError("no CLIP weights: give --clip-weights FILE, --pretrained TAG, or --random-init SEED")
    source = (f"weights {backbone.weights}" if backbone.weights else f"pretrained {backbone.pretrained}"
              if backbone.pretrained else f"random weights, seed {backbone.init_seed}")
    log.info("building %s at %d px (%s)", backbone.name, config.image_size, source)
    model = create_clip(backbone, config.image_size)
    weights = resolve_weights(backbone, base_dir)
    if weights is not None:
        if check_hash and backbone.weights_sha256:
            digest = sha256_file(weights)
            if digest != backbone.weights_sha256:
                raise UserError(
                    f"CLIP weights {weights} (sha256 {digest[:12]}) are not those the adapters were trained "
                    f"with (sha256 {backbone.weights_sha256[:12]}): pass the training-time file"
                )
        load_clip_weights(model, weights, backbone)
        log.info("loaded CLIP weights %s", weights)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(backbone.name)
    return model, tokenizer


def build_on_backbone(config: ModelConfig, build, base_dir: Optional[Path] = None, check_hash: bool = True):
    """``build(clip, tokenizer, config)`` (a family's model class or build hook) on the frozen backbone of
    ``config``; trainable weights initialized from the current torch RNG. A relative weights path becomes
    absolute, so the config can be saved anywhere."""
    clip, tokenizer = build_clip(config, base_dir=base_dir, check_hash=check_hash)
    weights = resolve_weights(config.backbone, base_dir)
    if weights is not None:
        config.backbone.weights = str(weights.resolve())
    return build(clip, tokenizer, config)


def vision_geometry(clip_model) -> tuple[int, int, int]:
    """(number of visual blocks, patch size, grid side) of an OpenCLIP VisionTransformer."""
    visual = clip_model.visual
    patch = visual.conv1.kernel_size[0]
    grid = visual.grid_size[0]
    return len(visual.transformer.resblocks), patch, grid


def write_random_weights(name: str, path: Path, seed: int = 0) -> Path:
    """Save a seeded random initialization of an OpenCLIP config at its native resolution.

    Stands in for real CLIP weights where none can be downloaded (tests, the demo); loading it at
    another resolution exercises the same position-embedding resize as real weights.
    """
    from aaclip.contract.files import atomic_path
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    logging.getLogger().addFilter(_quiet_random_init)
    try:
        model = open_clip.create_model(name, pretrained=None, device="cpu")
    finally:
        logging.getLogger().removeFilter(_quiet_random_init)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp))
    return Path(path)
