"""The toy's registry entry: what the pipeline needs to know of it (``aaclip.train.families.Family``)."""
from __future__ import annotations

from aaclip.contract.score import ScoreParams
from aaclip.train.families import Family, register_family

from toy_family.config import ToyConfig
from toy_family.model import ToyModel
from toy_family.trainer import ToyOptions, ToyTrainer


def default_score(model) -> ScoreParams:
    return ScoreParams(map_lo=-1.0, map_hi=1.0, cls_lo=-1.0, cls_hi=1.0, map_weight=0.5)


FAMILY = register_family(Family(
    name="toy", config_class=ToyConfig, build=ToyModel, default_score=default_score,
    trainer=ToyTrainer, train_options=ToyOptions,
    summary="test family: one linear layer on CLIP patch tokens",
))
