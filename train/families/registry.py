"""The model-family registry: ``method`` name -> ``Family`` (timm-style ``register_family``).

A family is everything the pipeline needs to know about one anomaly-detection method on an OpenCLIP
backbone. Commands never name a method's classes: they look the family up by the ``method`` of a
checkpoint config (``aaclip-eval``, ``aaclip-export``) or of ``--method`` (``aaclip-train``,
``aaclip-bench``) and call its hooks. Importing this module is cheap (no torch). The families that ship
with aaclip-edge register themselves when ``aaclip.train.families`` is imported (which Python does before
it imports this module).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from aaclip.contract.errors import UserError
from aaclip.contract.manifest import DEFAULT_METHOD
from aaclip.data.object_names import object_name

log = logging.getLogger(__name__)

__all__ = ["Family", "DEFAULT_METHOD", "register_family", "unregister_family", "get_family", "family_names",
           "check_method"]


@dataclass(frozen=True)
class Family:
    """One model family. Hooks take and return the objects of ``aaclip.train.families.base``.

    - ``name``: the method key (``--method``, ``config.json``'s and the manifest's ``method``).
    - ``config_class``: a ``ModelConfig`` subclass whose ``method`` default is ``name``.
    - ``build(clip, tokenizer, config) -> FamilyModel``: the model on a built (frozen) OpenCLIP backbone;
      trainable weights initialized from the current torch RNG.
    - ``default_score(model) -> ScoreParams``: the score constants of an uncalibrated artifact.
    - ``deploy(model, precision) -> nn.Module`` with ``predict(images, constants)`` that traces to plain
      ONNX ops; what export folds into the graph. None: ``deploy.deploy_copy`` (the model without the
      text tower, attention made exportable).
    - ``trainer(model, records, root, out_dir, options)``: an object whose ``run()`` trains, writes the
      checkpoint into ``out_dir`` after every epoch with a resume state ``train_state.pt``, and returns
      ``out_dir`` (a subclass of ``aaclip.train.common.driver.Driver``, which does all that around the
      family's steps); ``train_options`` its options dataclass (extending ``driver.RunOptions``). None:
      training-free (``aaclip-train init`` writes its checkpoint).
    - ``import_official(src, out_dir, config, **options) -> Path``: convert the method's official
      checkpoint into a checkpoint folder (``aaclip-train import-official``); None: no importer.
    - ``flops(config) -> dict``: analytic FLOPs per image of the deployed graph,
      ``{"breakdown": {part: int, ..., "total": int}, "convention": str, ...}`` (``aaclip-bench``).
    - ``default_object_name(class_name) -> str``: the prompt name of a class nobody named
      (``--object-name``); None: the built-in tables of ``aaclip.data.object_names`` (AA-CLIP's names).
    - ``references``: the model keeps per-class reference images of normal parts (``model.set_references``;
      ``aaclip-train init --reference-images`` / ``aaclip-train references``), e.g. Res2CLIP's bank.
    """

    name: str
    config_class: type
    build: Callable[..., Any]
    default_score: Callable[[Any], Any]
    deploy: Optional[Callable[[Any, str], Any]] = None
    trainer: Optional[Callable[..., Any]] = None
    train_options: Optional[type] = None
    import_official: Optional[Callable[..., Any]] = None
    flops: Optional[Callable[[Any], dict]] = None
    summary: str = ""
    default_object_name: Optional[Callable[[str], str]] = None
    references: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"family name {self.name!r}: use letters, digits, '-' and '_'")
        fields = getattr(self.config_class, "__dataclass_fields__", {})
        if "method" not in fields or fields["method"].default != self.name:
            raise ValueError(f"{self.config_class.__name__}.method must default to the family name {self.name!r}")
        if (self.trainer is None) != (self.train_options is None):
            raise ValueError(f"family {self.name!r}: give both trainer and train_options, or neither")
        if self.train_options is not None and not dataclasses.is_dataclass(self.train_options):
            raise ValueError(f"family {self.name!r}: train_options must be a dataclass")

    @property
    def trainable(self) -> bool:
        return self.trainer is not None

    def object_name(self, class_name: str, overrides: Optional[dict[str, str]] = None) -> str:
        """The prompt name of ``class_name``: the user's (``overrides``), else the family's default."""
        if overrides and class_name in overrides:
            return overrides[class_name]
        if self.default_object_name is not None:
            return self.default_object_name(class_name)
        return object_name(class_name)


_REGISTRY: dict[str, Family] = {}
def register_family(family: Family, replace: bool = False) -> Family:
    """Add ``family`` to the registry (``replace=True`` to redefine a name); returns it."""
    if family.name in _REGISTRY and not replace and _REGISTRY[family.name] is not family:
        raise ValueError(f"a family named {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    log.debug("registered model family %s", family.name)
    return family


def unregister_family(name: str) -> None:
    _REGISTRY.pop(name, None)


def family_names() -> list[str]:
    return sorted(_REGISTRY)


def get_family(name: str) -> Family:
    """The family registered as ``name``; a UserError listing the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown method {name!r}: registered model families are "
                        f"{', '.join(sorted(_REGISTRY))}") from None


def check_method(actual: str, requested: Optional[str], what: str) -> None:
    """``--method`` on a command that reads the method from ``what`` (a checkpoint or artifact) only
    checks it: a registered name equal to ``actual``."""
    if requested is None:
        return
    get_family(requested)
    if requested != actual:
        raise UserError(f"{what} holds a model of method {actual!r}, not {requested!r}: drop --method or pass a "
                        f"checkpoint of method {requested!r}")
