"""The model-family registry: method in checkpoints, old checkpoints, per-family backbone settings, the CLIs'
--method, `aaclip-train init`, and the one random-checkpoint builder."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from aaclip.contract.errors import UserError
from aaclip.train.checkpoint import load_checkpoint, random_checkpoint
from aaclip.train.common.config import BackboneConfig, ModelConfig
from aaclip.train.families.aa_clip.config import AAClipConfig
from aaclip.train.families import Family, family_names, get_family
from aaclip.train.families.aa_clip.model import AAClip
from click.testing import CliRunner
from model_fixtures import TINY, TINY_SIZE, make_tiny_checkpoint


def test_aaclip_is_registered_with_its_hooks():
    family = get_family("aa-clip")
    assert "aa-clip" in family_names() and family.config_class is AAClipConfig and family.trainable
    assert family.import_official is not None and family.flops is not None
    with pytest.raises(UserError, match=r"^unknown method 'nope': registered model families are aa-clip"):
        get_family("nope")


def test_family_definition_is_checked():
    @dataclass
    class Other(ModelConfig):
        method: str = "other"

    with pytest.raises(ValueError, match="must default to the family name 'mismatch'"):
        Family(name="mismatch", config_class=Other, build=print, default_score=print)
    with pytest.raises(ValueError, match="both trainer and train_options"):
        Family(name="other", config_class=Other, build=print, default_score=print, trainer=print)


def test_checkpoint_records_method_and_backbone_settings(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "ck")
    config = json.loads((ckpt / "config.json").read_text())
    assert config["method"] == "aa-clip" and config["format_version"] == 2
    assert (config["backbone"]["activation"], config["backbone"]["pos_embed_resize"]) == ("gelu", "bicubic-antialias")


def test_old_checkpoint_without_method_loads_as_aaclip(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "ck")
    new = load_checkpoint(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    del config["method"], config["backbone"]["pos_embed_resize"]
    config["format_version"] = 1  # exactly what aaclip-edge wrote before model families
    (ckpt / "config.json").write_text(json.dumps(config))
    old = load_checkpoint(ckpt)
    assert isinstance(old, AAClip) and old.config.method == "aa-clip"
    assert old.config.backbone.pos_embed_resize == "bicubic-antialias"
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    T = old.class_constants(["metal disk"])[0]
    with torch.no_grad():
        assert torch.equal(old.predict(x, T)[0], new.predict(x, T)[0])


def test_unknown_method_or_newer_format_in_a_config_is_refused(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "ck")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(config, method="clip-zz")))
    with pytest.raises(UserError, match="unknown method 'clip-zz': registered model families are aa-clip"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text(json.dumps(dict(config, format_version=3)))
    with pytest.raises(UserError, match="checkpoint format 3 is newer than this aaclip-edge"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("mode, interpolation, antialias", [("bicubic-antialias", "bicubic", True),
                                                            ("bilinear", "bilinear", False)])
def test_position_embedding_resize_follows_the_config(tmp_path, mode, interpolation, antialias):
    from aaclip.train.common.backbone import build_clip, read_state_dict, write_random_weights

    weights = write_random_weights(TINY, tmp_path / "w.safetensors", seed=0)
    native = read_state_dict(weights)["visual.positional_embedding"]  # 6 x 6 grid + class slot
    config = AAClipConfig(backbone=BackboneConfig(name=TINY, weights=str(weights), pos_embed_resize=mode),
                          image_size=TINY_SIZE)
    clip, _ = build_clip(config)
    grid = native[1:].reshape(1, 6, 6, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode=interpolation, antialias=antialias, align_corners=False)
    expected = torch.cat([native[:1], expected.permute(0, 2, 3, 1).reshape(64, -1)])
    assert torch.allclose(clip.visual.positional_embedding, expected, atol=1e-6)
    other = "bilinear" if mode == "bicubic-antialias" else "bicubic-antialias"
    config.backbone.pos_embed_resize = other
    assert not torch.allclose(build_clip(config)[0].visual.positional_embedding, expected, atol=1e-3)


def test_random_checkpoint_is_one_builder_for_every_use(tmp_path):
    a = random_checkpoint(tmp_path / "a", seed=3)
    b = random_checkpoint(tmp_path / "b", seed=3)
    assert (a / "clip.safetensors").is_file()
    wa, wb = load_checkpoint(a).trainable_state_dict(), load_checkpoint(b).trainable_state_dict()
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)  # seeded: the same weights
    c = random_checkpoint(tmp_path / "c", seed=3, trainable_seed=9, weights_file=None, fields={"relu": True})
    config = json.loads((c / "config.json").read_text())
    assert config["backbone"]["init_seed"] == 3 and config["backbone"]["weights"] is None and config["relu"] is True
    assert not (c / "clip.safetensors").exists()
    with pytest.raises(UserError, match="image size 60 is not a multiple of aaclip-tiny's patch size 8"):
        random_checkpoint(tmp_path / "d", image_size=60)


def test_train_init_writes_an_untrained_checkpoint(tmp_path):
    from aaclip.train.common.backbone import write_random_weights
    from aaclip.train.train_cli import main

    weights = write_random_weights(TINY, tmp_path / "clip.safetensors", seed=0)
    out = tmp_path / "init"
    args = ["init", "--method", "aa-clip", "--backbone", TINY, "--clip-weights", str(weights), "--image-size",
            str(TINY_SIZE), "--classes", "disk,wood", "--object-name", "wood=oak plank", "--set", "relu=true",
            "--activation", "quickgelu", "--out", str(out), "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    model = load_checkpoint(out)
    assert model.config.classes == {"disk": "metal disk", "wood": "oak plank"} and model.config.relu is True
    assert model.config.backbone.activation == "quickgelu"
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "already holds a checkpoint" in res.stderr
    res = CliRunner().invoke(main, args[:-3] + ["--set", "depth=3", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--set depth: aa-clip configs have no such field" in res.stderr
    res = CliRunner().invoke(main, ["init", "--method", "nope", "--random-init", "0", "--classes", "a", "--out",
                                    str(tmp_path / "y")])
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        "error: unknown method 'nope': registered model families are aa-clip, clip-ad, clip-ad-plus, res2clip, "
        "res2clip-ft"]


def test_export_and_eval_check_method(tmp_path):
    from aaclip.export.cli import cli as export_cli
    from aaclip.train.eval_cli import main as eval_main

    ckpt = make_tiny_checkpoint(tmp_path / "ck")
    res = CliRunner().invoke(export_cli, [str(ckpt), "--method", "nope"])
    assert res.exit_code == 2 and "unknown method 'nope'" in res.stderr
    (tmp_path / "d.jsonl").write_text("")
    res = CliRunner().invoke(eval_main, ["--checkpoint", str(ckpt), "--data", str(tmp_path / "d.jsonl"), "--method", "x"])
    assert res.exit_code == 2 and "unknown method 'x'" in res.stderr


def test_export_refuses_a_checkpoint_of_another_method(tmp_path):
    from aaclip.export.cli import cli as export_cli
    from aaclip.train.families import register_family, unregister_family

    @dataclass
    class Other(ModelConfig):
        method: str = "other-test"

    register_family(Family(name="other-test", config_class=Other, build=print, default_score=print))
    try:
        ckpt = make_tiny_checkpoint(tmp_path / "ck")
        res = CliRunner().invoke(export_cli, [str(ckpt), "--method", "other-test"])
        assert res.exit_code == 2
        assert res.stderr.strip() == (f"error: checkpoint {ckpt} holds a model of method 'aa-clip', not "
                                      "'other-test': drop --method or pass a checkpoint of method 'other-test'")
    finally:
        unregister_family("other-test")


def test_pretrained_tag_is_resized_with_the_backbones_mode(monkeypatch):
    """A pretrained tag with a non-default resize mode: the weights load at their native size and are
    resized with the config's mode (OpenCLIP alone would resize them bicubic+antialias)."""
    import open_clip
    from aaclip.train.common import backbone as bb

    real = open_clip.create_model
    natives = []

    def fake_create(name, pretrained=None, **kw):
        if pretrained == "fake-tag":  # stands in for a download: seeded weights at the native size
            assert "force_image_size" not in kw
            torch.manual_seed(7)
            natives.append(real(name, pretrained=None, **kw))
            return natives[-1]
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(bb.open_clip, "create_model", fake_create)
    config = AAClipConfig(backbone=BackboneConfig(name=TINY, pretrained="fake-tag", pos_embed_resize="bilinear"),
                          image_size=TINY_SIZE)
    clip, _ = bb.build_clip(config)
    native = natives[0].visual.positional_embedding.detach()
    grid = native[1:].reshape(1, 6, 6, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False)
    expected = torch.cat([native[:1], expected.permute(0, 2, 3, 1).reshape(64, -1)])
    assert torch.allclose(clip.visual.positional_embedding, expected, atol=1e-6)
    assert torch.equal(clip.visual.conv1.weight, natives[0].visual.conv1.weight)
