"""What stations and training folders already hold keeps loading: checkpoint configs of every family and
artifact manifests, as small JSON files in today's format (tests/fixtures/, written by the code of
December 2026 before the second renovation: configs from ``random_checkpoint``, manifests from
``export_onnx`` and ``calibrate_artifact`` with their machine paths replaced)."""
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from aaclip.contract.manifest import load_manifest  # noqa: E402
from aaclip.contract.score import ScoreParams  # noqa: E402
from aaclip.train.checkpoint import build_model, checkpoint_config  # noqa: E402
from aaclip.train.families import get_family  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
METHODS = ("aa-clip", "clip-ad", "clip-ad-plus", "res2clip", "res2clip-ft")


def _checkpoint_folder(tmp_path: Path, method: str) -> Path:
    folder = tmp_path / method
    folder.mkdir()
    shutil.copy(FIXTURES / "configs" / f"{method}.json", folder / "config.json")
    return folder


@pytest.mark.parametrize("method", METHODS)
def test_a_saved_config_loads_into_its_familys_config_with_every_value_kept(tmp_path, method):
    """Every saved field is read with its value; a field added since gets the value that reproduces what the
    saved model computed (CLIP-AD's anchor_precision: float32, not the new float16 default); saved again it
    reads back the same."""
    folder = _checkpoint_folder(tmp_path, method)
    saved = json.loads((folder / "config.json").read_text())
    config = checkpoint_config(folder)
    assert type(config) is get_family(method).config_class and config.method == method
    now = config.to_dict()
    assert {k: now[k] for k in saved} == saved
    assert {k: v for k, v in now.items() if k not in saved} == (
        {"anchor_precision": "float32"} if method.startswith("clip-ad") else {})
    config.save(folder / "config.json")
    assert checkpoint_config(folder).to_dict() == now


@pytest.mark.parametrize("method, trainable", [("aa-clip", "text_proj.fc.weight"),
                                               ("clip-ad-plus", "linear_layers.fc.0.weight")])
def test_a_saved_config_builds_its_model(tmp_path, method, trainable):
    config = checkpoint_config(_checkpoint_folder(tmp_path, method))
    model = build_model(config)
    assert trainable in model.trainable_state_dict()
    assert model.config.classes == {"disk": "metal disk", "wood": "wooden board"}
    assert model.clip.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "GELU"


def test_a_saved_manifest_loads():
    m = load_manifest(FIXTURES / "manifests" / "model.onnx")
    assert (m.method, m.precision, m.artifact_format) == ("aa-clip", "fp32", "onnx")
    assert (m.height, m.width, m.image_size, m.input_name) == (64, 64, 64, "image")
    assert m.classes == ("disk", "wood") and m.object_names == ("metal disk", "wooden board")
    assert m.class_input == "class_id" and m.output_names == ("anomaly_map", "map_max", "cls_score")
    assert not m.calibrated and m.checkpoint == "runs/plates"
    assert m.score == ScoreParams(map_lo=2.0, map_hi=6.0, cls_lo=0.5, cls_hi=1.0, map_weight=0.5, threshold=0.5,
                                  pixel_threshold=0.5)


def test_a_saved_calibrated_manifest_keeps_its_threshold():
    m = load_manifest(FIXTURES / "manifests" / "calibrated.onnx")
    assert m.calibrated and m.artifact_path.name == "calibrated.onnx"
    assert m.score.threshold == 0.6032685562334267 and m.score.pixel_threshold == 1.5087640285491943
    assert m.data["score"]["calibration"]["frames"] == 16 and m.data["score"]["calibration"]["method"] == "gaussian-fit"
