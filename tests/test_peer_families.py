"""CLIP-AD (clip-ad, clip-ad-plus) and Res2CLIP (res2clip, res2clip-ft) as model families on the tiny config:
maps and scores against hand computations / transcriptions of the official test code, checkpoints from
``aaclip-train init`` (with reference images) and ``fit`` (resumable), importers of the official formats,
ONNX parity at FP32 and FP16, the parity gate, TensorRT-RTX builds and FLOP counts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import torch.nn.functional as F  # noqa: E402
from aaclip.contract.errors import UserError  # noqa: E402
from aaclip.train.checkpoint import load_checkpoint  # noqa: E402
from click.testing import CliRunner  # noqa: E402

SIZE = 64
METHODS = ("clip-ad", "clip-ad-plus", "res2clip", "res2clip-ft")
CLASSES = ("disk", "wood")


def _train_cli(args) -> str:
    from aaclip.train.train_cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output + (res.stderr if res.stderr_bytes else "")
    return res.output


def _train_cli_error(args) -> str:
    from aaclip.train.train_cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    return res.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from aaclip.train.common.backbone import write_random_weights
    from aaclip.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("peers")
    paths = generate_dataset(root / "data", classes=list(CLASSES), image_size=SIZE, n_train_normal=3,
                             n_train_anomalous=3, n_test_normal=2, n_test_anomalous=2, seed=5)
    write_random_weights("aaclip-tiny", root / "clip.safetensors", seed=0)
    return root, paths


def _backbone_args(root: Path) -> list:
    return ["--backbone", "aaclip-tiny", "--clip-weights", root / "clip.safetensors", "--image-size", SIZE]


@pytest.fixture(scope="module")
def ckpts(workspace):
    """One checkpoint per family: init for the training-free ones (Res2CLIP's references from the label-0
    training records), fit (a few steps) for the trained ones."""
    root, paths = workspace
    out = {}
    out["clip-ad"] = root / "sdp"
    _train_cli(["init", "--method", "clip-ad", *_backbone_args(root), "--classes", ",".join(CLASSES),
                "--set", "sigma=2", "--out", out["clip-ad"], "-q"])
    out["res2clip"] = root / "r2"
    text = _train_cli(["init", "--method", "res2clip", *_backbone_args(root), "--classes", ",".join(CLASSES),
                       "--reference-data", paths["train"], "--out", out["res2clip"], "-q"])
    assert "reference bank disk: 1 image(s), 0.0 MB (float32)" in text  # (4 x 64 + 3) x 32 floats = 33 kB
    assert "reference banks: 2 class(es), 0.1 MB in all" in text
    for method, name, opts in (("clip-ad-plus", "sdp_plus", ["epochs=2", "batch=4", "max_steps_per_epoch=2"]),
                               ("res2clip-ft", "r2ft", ["epochs=2", "batch=4", "max_steps_per_epoch=2"])):
        out[method] = root / name
        args = ["fit", "--method", method, "--data", paths["train"], *_backbone_args(root), "--out", out[method], "-q"]
        _train_cli(args + [a for o in opts for a in ("--option", o)])
    return out


@pytest.fixture(scope="module")
def models(ckpts):
    return {m: load_checkpoint(p) for m, p in ckpts.items()}


@pytest.fixture(scope="module")
def frames():
    from aaclip.data import synth

    rng = np.random.default_rng(3)
    out = [synth.draw_product(CLASSES[i % 2], rng, SIZE) for i in range(3)]
    out[1], _ = synth.add_defect(out[1], rng)
    return np.stack(out)


def _normalized(frames):
    from aaclip.export.graph import reference_preprocess

    return reference_preprocess(frames, (SIZE, SIZE), SIZE)


# ---- registry, configs, backbones -------------------------------------------------------------------------
def test_families_are_registered_with_their_backbone_settings(ckpts, models):
    from aaclip.train.common.config import BackboneConfig
    from aaclip.train.families import get_family
    from aaclip.train.families.clip_ad.config import ClipAdConfig

    listed = _train_cli(["methods"])
    for line in ("clip-ad\ttraining-free\t", "clip-ad-plus\ttrainable, import-official\t", "res2clip\ttraining-free\t",
                 "res2clip-ft\ttrainable, import-official\t"):
        assert line in listed
    for method, (act, pos, gelu) in {"clip-ad": ("gelu", "bicubic-antialias", "GELU"),
                                     "res2clip": ("quickgelu", "bilinear", "QuickGELU")}.items():
        config = json.loads((ckpts[method] / "config.json").read_text())
        backbone = config["backbone"]
        assert config["method"] == method and (backbone["activation"], backbone["pos_embed_resize"]) == (act, pos)
        assert type(models[method].clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == gelu
        assert config["classes"] == {"disk": "disk", "wood": "wood"}  # class names verbatim, as the official code
        assert get_family(method).flops is not None
    # CLIP-AD runs OpenAI's QuickGELU model only at the weights' native size, as OpenCLIP's factory does
    native = ClipAdConfig(backbone=BackboneConfig(name="ViT-L-14-336", pretrained="openai"), image_size=336)
    other = ClipAdConfig(backbone=BackboneConfig(name="ViT-L-14-336", pretrained="openai"), image_size=518)
    assert (native.backbone.activation, other.backbone.activation) == ("quickgelu", "gelu")
    with pytest.raises(UserError, match="rvs must be one of dbscan, mean"):
        ClipAdConfig(rvs="pca")
    assert set(models["clip-ad"].trainable_state_dict()) == set()
    assert sorted(models["clip-ad-plus"].trainable_state_dict()) == [f"linear_layers.fc.{i}.{p}" for i in range(4)
                                                                      for p in ("bias", "weight")]


# ---- CLIP-AD: maps and scores by hand -------------------------------------------------------------------------
def test_representative_vectors(caplog):
    from aaclip.train.families.clip_ad.model import prompt_sentences, representative_vector

    normal, abnormal = prompt_sentences("metal_nut")
    assert (len(normal), len(abnormal)) == (198, 220)
    assert "a photo of a flawless metal_nut for anomaly detection." in normal
    assert "a jpeg corrupted photo of the metal_nut with contamination." in abnormal
    rng = np.random.default_rng(0)
    base = np.eye(8)[0]
    cluster = base + 0.05 * rng.normal(size=(20, 8))
    cluster /= np.linalg.norm(cluster, axis=1, keepdims=True)
    outliers = np.eye(8)[1:4]  # three far points: DBSCAN noise
    data = np.concatenate([cluster, outliers])
    mean = cluster.mean(0) / np.linalg.norm(cluster.mean(0))
    np.testing.assert_allclose(representative_vector(data, "dbscan", 0.5, 15, "x"), mean, atol=1e-12)
    plain = data.mean(0) / np.linalg.norm(data.mean(0))
    np.testing.assert_allclose(representative_vector(data, "mean", 0.5, 15, "x"), plain, atol=1e-12)
    with caplog.at_level("WARNING"):
        noise = representative_vector(data, "dbscan", 0.01, 15, "normal 'x'")
    np.testing.assert_allclose(noise, plain, atol=1e-12)  # the official code would crash here
    assert "labels every normal 'x' sentence noise: using their mean instead" in caplog.text


def test_clip_ad_maps_and_scores_by_hand(models, frames):
    from scipy.ndimage import gaussian_filter

    for method in ("clip-ad", "clip-ad-plus"):
        m = models[method]
        T = m.class_constants(["wood"])[0]
        # unit vectors to float16 precision: the official float16 normalization (anchor_precision, default)
        assert T.shape == (32, 2) and torch.allclose(T.norm(dim=0), torch.ones(2), atol=2e-3)
        x = _normalized(frames)
        with torch.no_grad():
            amap, cls = m.predict(x, T)
            feats, original = m.encode_image(x)
        Tn = T.double().numpy()
        total = np.zeros((3, 8, 8))
        for f in feats:
            f = f.double().numpy()
            sims = f @ Tn  # (B, 65, 2)
            p = np.exp(sims[:, 0]) / np.exp(sims[:, 0]).sum(-1, keepdims=True)
            total += (p[:, None, 1] * sims[:, 1:, 1] - p[:, None, 0] * sims[:, 1:, 0]).reshape(3, 8, 8)
        up = F.interpolate(torch.from_numpy(total)[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        raw = up[:, 0].numpy()
        if method == "clip-ad-plus":
            for fc, o in zip(m.linear_layers.fc, original):
                v = F.normalize(fc(o[:, 1:]).detach(), dim=-1).double()
                logits = (100 * v @ T.double()).transpose(1, 2).reshape(3, 2, 8, 8)
                prob = torch.softmax(F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=True), 1)
                raw = raw + prob[:, 1].numpy()
        assert m.config.sigma == (2.0 if method == "clip-ad" else 8.0)  # --set sigma=2 / the default
        expected = np.stack([gaussian_filter(r, sigma=m.config.sigma, mode="reflect") for r in raw])
        span = expected.max() - expected.min()
        assert np.abs(amap.numpy() - expected).max() <= 1e-5 * span
        c = 100 * feats[-1][:, 0].double().numpy() @ Tn
        c = np.exp(c[:, 1]) / np.exp(c).sum(-1)
        np.testing.assert_allclose(cls.numpy(), c, atol=1e-6)
        assert np.all((cls.numpy() > 0) & (cls.numpy() < 1))


# ---- Res2CLIP: the official test loop, transcribed ------------------------------------------------------------
def _official_res2clip(m, images, bank_rows, rt_text, rt_res):
    """``R2:test.py`` for one class (sorted sparsemax, the 5x5 kernel module, the identity interpolate, torch.sort)."""
    import math

    from aaclip.train.common.peer_ops import sparsemax_sorted

    feats, g = m.encode(images)
    n, G = m.shots * m.patches, m.grid
    banks = [bank_rows[i * n:(i + 1) * n][None] for i in range(4)]
    g_ref = bank_rows[4 * n]
    y, x = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
    c = (G - 1) / 2.0
    r = torch.sqrt((x.flatten().float() - c) ** 2 + (y.flatten().float() - c) ** 2)
    penalty = 0.01 * torch.abs(r.unsqueeze(1) - r.unsqueeze(0)).repeat(1, m.shots)
    kernel = torch.exp(-torch.sum((torch.stack(torch.meshgrid(torch.arange(5.), torch.arange(5.), indexing="xy"), -1)
                                   - 2.0) ** 2, -1) / 32.0) / (2 * math.pi * 16.0)
    blur = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False)
    blur.weight.data = (kernel / kernel.sum()).view(1, 1, 5, 5)
    maps_text, maps_vis, maps_res = [], [], []
    for tap, f, ref in zip(m.taps, feats, banks):
        b = f.shape[0]
        if tap == m.taps[-1]:
            maps_text.append((f @ rt_text.unsqueeze(-1)).squeeze(-1).view(b, 1, G, G))
        w = sparsemax_sorted(f @ ref.permute(0, 2, 1) - penalty.unsqueeze(0))
        matched = torch.bmm(w, ref.expand(b, -1, -1))
        rv = f - matched / matched.norm(dim=-1, keepdim=True)
        vis = m.vis_adapters[str(tap)](rv) if m.finetuned else rv
        maps_vis.append(torch.norm(vis, p=2, dim=-1).view(b, 1, G, G))
        if tap in m.res_taps:
            res = m.res_vis_local_adapters[str(tap)](rv) if m.finetuned else rv
            maps_res.append(torch.clamp((res @ rt_res.unsqueeze(-1)).squeeze(-1), min=0).view(b, 1, G, G))

    def avg_upsample(ms):
        return blur(F.interpolate(torch.stack(ms).mean(0), size=(SIZE, SIZE), mode="bilinear"))

    m_text, m_vis, m_res = avg_upsample(maps_text), avg_upsample(maps_vis), avg_upsample(maps_res)
    w_res = 0.1 if m.finetuned else 1.0
    M = blur(F.interpolate(m_text * 0.1 + m_vis + m_res * w_res, size=(SIZE, SIZE), mode="bilinear"))

    def top1pct(t):
        flat = t.flatten(1)
        return torch.sort(flat, dim=1, descending=True)[0][:, :max(1, int(flat.shape[1] * 0.01))].mean(1)

    rv_cls = g.unsqueeze(1) - (g_ref / g_ref.norm())
    res_cls = m.res_vis_global_adapter(rv_cls) if m.finetuned else rv_cls
    s_res_cls = torch.clamp((res_cls @ rt_res.unsqueeze(-1)).squeeze(-1).squeeze(-1), min=0)
    s = (0.5 * top1pct(m_text) + 0.5 * (g.unsqueeze(1) @ rt_text.unsqueeze(-1)).flatten() + top1pct(m_vis)
         + w_res * (0.5 * top1pct(m_res) + 0.5 * s_res_cls))
    return M[:, 0], s


@pytest.mark.parametrize("method", ["res2clip", "res2clip-ft"])
def test_res2clip_equals_the_official_test_loop(models, frames, method):
    from aaclip.train.families.res2clip.model import text_sentences

    m = models[method]
    normal, anomalous = text_sentences()
    assert (len(normal), len(anomalous)) == (75, 30) and "a photo of a object." in normal
    assert "itap of a object with damaged." in anomalous
    constants = m.class_constants(["disk"])[0]
    bank, g_ref, rt_text, rt_res = m.split_constants(constants)
    assert constants.shape == (4 * 64 + 3, 32) and torch.allclose(g_ref.norm(), torch.tensor(1.0))
    if method == "res2clip":
        assert torch.equal(rt_text, rt_res) and torch.allclose(rt_text, m.text_residual())
    x = _normalized(frames)
    with torch.no_grad():
        amap, score = m.predict(x, constants)
        ref_map, ref_score = _official_res2clip(m, x, constants, rt_text, rt_res)
    span = float(ref_map.max() - ref_map.min())
    assert (amap - ref_map).abs().max() <= 1e-5 * span
    assert torch.allclose(score, ref_score, atol=1e-5)
    assert m.res_taps == ((1, 2, 3, 4) if m.finetuned else (4,))  # tiny: 4 blocks, taps 1..4


def test_res2clip_bank_is_built_from_the_chosen_normal_images(workspace, ckpts, models):
    from aaclip.train.common.preprocess import load_rgb, normalize, to_unit_tensor
    from aaclip.data.records import read_records, resolve
    from aaclip.data.shots import sample_shots

    root, paths = workspace
    m = models["res2clip"]
    chosen = sample_shots([r for r in read_records(paths["train"]) if r.label == 0], 1, 0, label=0)
    for i, c in enumerate(CLASSES):
        rec = [r for r in chosen if r.class_name == c][0]
        image = normalize(to_unit_tensor(load_rgb(resolve(paths["train"].parent, rec.image_path), SIZE)))[None]
        assert torch.allclose(m.reference_bank[i], m.reference_rows(image), atol=1e-6)
    with pytest.raises(UserError, match="no reference bank for 'plate'"):
        m.class_constants(["plate"])


def test_reference_images_and_the_references_command(workspace, ckpts, tmp_path):
    import cv2
    from aaclip.data import synth

    root, _ = workspace
    refs = tmp_path / "refs"
    rng = np.random.default_rng(9)
    for c in ("disk", "plate"):
        (refs / c).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(refs / c / f"{i}.png"), synth.draw_product(c, rng, 80))
    out = tmp_path / "r2"
    text = _train_cli(["init", "--method", "res2clip", *_backbone_args(root), "--classes", "disk", "--set", "shots=2",
                       "--reference-images", refs, "--out", out, "-q"])
    assert "reference bank disk: 2 image(s), 0.1 MB (float32)" in text  # (4 x 2 x 64 + 3) x 32 x 4 bytes
    model = load_checkpoint(out)
    assert model.reference_bank.shape == (1, 4 * 2 * 64 + 1, 32) and model.config.shots == 2
    text = _train_cli(["references", out, "--reference-images", refs, "--classes", "plate", "-q"])
    assert "reference banks: 2 class(es)" in text
    model = load_checkpoint(out)
    assert model.config.classes == {"disk": "disk", "plate": "plate"} and model.reference_bank.shape[0] == 2
    assert model.class_constants(["plate", "disk"]).shape == (2, 4 * 2 * 64 + 3, 32)
    err = _train_cli_error(["init", "--method", "res2clip", *_backbone_args(root), "--classes", "disk,mesh",
                            "--reference-images", refs, "--out", tmp_path / "x"])
    assert err == (f"error: --reference-images {refs} has no sub-folder 'mesh' (one folder of normal images per "
                   "class; found: disk, plate)")
    err = _train_cli_error(["init", "--method", "res2clip", *_backbone_args(root), "--classes", "disk",
                            "--out", tmp_path / "y"])
    assert "give the normal reference images with exactly one of --reference-images DIR" in err
    err = _train_cli_error(["init", "--method", "clip-ad", *_backbone_args(root), "--classes", "disk",
                            "--reference-images", refs, "--out", tmp_path / "z"])
    assert err == "error: method 'clip-ad' keeps no reference images: drop --reference-images/--reference-data"
    err = _train_cli_error(["init", "--method", "res2clip", *_backbone_args(root), "--classes", "disk,plate",
                            "--object-name", "plate=disk", "--reference-images", refs, "--out", tmp_path / "w"])
    assert "give every class a distinct object name" in err
    err = _train_cli_error(["fit", "--method", "clip-ad", "--data", workspace[1]["train"], *_backbone_args(root),
                            "--out", tmp_path / "v"])
    assert err.startswith("error: method 'clip-ad' is training-free: write its checkpoint with `aaclip-train init")


# ---- training: resumable, and it learns -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["clip-ad-plus", "res2clip-ft"])
def test_fit_resumes_to_the_uninterrupted_result(workspace, ckpts, tmp_path, method):
    root, paths = workspace
    out = tmp_path / "resumed"
    args = ["fit", "--method", method, "--data", paths["train"], *_backbone_args(root), "--out", out, "-q",
            "--option", "batch=4", "--option", "max_steps_per_epoch=2"]
    _train_cli(args + ["--option", "epochs=1"])
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1] and np.isfinite(history[0]["loss"]) and history[0]["loss"] > 0
    _train_cli(args + ["--option", "epochs=2"])  # continues with epoch 2
    assert [json.loads(x)["epoch"] for x in (out / "history.jsonl").read_text().splitlines()] == [1, 2]
    model = load_checkpoint(out)
    a, b = model.trainable_state_dict(), load_checkpoint(ckpts[method]).trainable_state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), "resumed != uninterrupted"
    if method == "clip-ad-plus":
        model.linear_layers.reset(42)  # the run's initialization (seed 42, as the official script)
    else:
        model.init_adapters(111)
    fresh = model.trainable_state_dict()
    moved = [k for k in a if not torch.equal(a[k], fresh[k])]
    assert moved and all(k.startswith(("linear_layers", "vis_adapters", "res_", "text_adapter")) for k in moved)
    if method == "res2clip-ft":  # the zero-initialized output layers left zero: both residual groups trained
        assert a["vis_adapters.4.up.weight"].abs().max() > 0 and a["res_vis_local_adapters.4.up.weight"].abs().max() > 0
        assert a["res_text_adapter.fc2.weight"].abs().max() > 0  # epoch 2 (odd) trains the residual text adapter


def test_sdp_plus_loss_is_focal_plus_dice_per_tap(models, frames):
    from aaclip.train.families.clip_ad.trainer import sdp_plus_loss
    from aaclip.train.common.losses import dice_loss, focal_loss

    m = models["clip-ad-plus"]
    x = _normalized(frames[:2])
    mask = torch.zeros(2, SIZE, SIZE)
    mask[1, 10:20, 30:40] = 1
    T = m.class_constants(["disk"]).expand(2, -1, -1)
    with torch.no_grad():
        loss = sdp_plus_loss(m, x, mask, T)
        _, original = m.encode_image(x)
        expected = 0.0
        for logits in m.linear_logits(original, T):
            p = torch.softmax(F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=True), 1)
            expected += focal_loss(p, mask) + dice_loss(p[:, 1], mask)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


# ---- importers of the official formats ---------------------------------------------------------------------------
class Payload:
    """A pickled object inside a checkpoint: torch.load(weights_only=True) must refuse to build it."""


def test_import_official_sdp_plus(workspace, models, tmp_path):
    root, _ = workspace
    rng = torch.Generator().manual_seed(4)
    official = {f"fc.{i}.weight": torch.randn(32, 64, generator=rng) for i in range(4)}
    official.update({f"fc.{i}.bias": torch.randn(32, generator=rng) for i in range(4)})
    (tmp_path / "run").mkdir()
    for epoch in (1, 5):  # CA:train.py writes epoch_<N>.pth; the latest is taken
        scaled = {k: v * epoch for k, v in official.items()}
        torch.save({"linear_layers": scaled}, tmp_path / "run" / f"epoch_{epoch}.pth")
    out = tmp_path / "imported"
    _train_cli(["import-official", tmp_path / "run", "--method", "clip-ad-plus", *_backbone_args(root),
                "--classes", "disk", "--out", out, "-q"])
    state = load_checkpoint(out).trainable_state_dict()
    assert all(torch.equal(state[f"linear_layers.{k}"], v * 5) for k, v in official.items())
    assert json.loads((out / "config.json").read_text())["classes"] == {"disk": "disk"}

    torch.save({"linear_layers": official, "x": Payload()}, tmp_path / "evil.pth")
    err = _train_cli_error(["import-official", tmp_path / "evil.pth", "--method", "clip-ad-plus", *_backbone_args(root),
                            "--out", tmp_path / "e"])
    assert "cannot read" in err and "safely" in err
    narrow = {k: v[:, :10] if v.dim() == 2 else v for k, v in official.items()}
    torch.save({"linear_layers": narrow}, tmp_path / "bad.pth")
    err = _train_cli_error(["import-official", tmp_path / "bad.pth", "--method", "clip-ad-plus", *_backbone_args(root),
                            "--out", tmp_path / "b"])
    assert "linear_layers.fc.0.weight is (32, 10), but backbone aaclip-tiny needs (32, 64)" in err
    err = _train_cli_error(["import-official", tmp_path / "bad.pth", "--method", "clip-ad", *_backbone_args(root),
                            "--out", tmp_path / "c"])
    assert err == "error: method 'clip-ad' has no importer of official checkpoints"


def test_import_official_res2clip(workspace, models, tmp_path):
    """A stand-in in the official format (``R2:train.py``'s torch.save of five state dicts) round-trips."""
    root, paths = workspace
    trained = models["res2clip-ft"]
    official = {key: {k[len(key) + 1:]: v for k, v in trained.trainable_state_dict().items() if k.startswith(key + ".")}
                for key in ("vis_adapters", "res_vis_local_adapters", "res_vis_global_adapter", "res_text_adapter",
                            "text_adapter")}
    assert sorted(official["vis_adapters"])[:2] == ["1.blend.weight", "1.conv_coarse.weight"]  # ModuleDict by tap
    torch.save(official, tmp_path / "checkpoint_ep10.pth")
    out = tmp_path / "imported"
    _train_cli(["import-official", tmp_path / "checkpoint_ep10.pth", "--method", "res2clip-ft", *_backbone_args(root),
                "--out", out, "-q"])
    assert json.loads((out / "config.json").read_text())["classes"] == {}  # references come next
    _train_cli(["references", out, "--reference-data", paths["train"], "-q"])
    imported = load_checkpoint(out)
    a, b = imported.trainable_state_dict(), trained.trainable_state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # adapters and (same seed) references
    del official["vis_adapters"]["1.up.weight"]
    torch.save(official, tmp_path / "broken.pth")
    err = _train_cli_error(["import-official", tmp_path / "broken.pth", "--method", "res2clip-ft",
                            *_backbone_args(root), "--out", tmp_path / "x"])
    assert "missing ['vis_adapters.1.up.weight']" in err


# ---- export: one graph per family, FP32 and FP16, parity, TensorRT-RTX ----------------------------------------------
@pytest.fixture(scope="module")
def exported(ckpts, models, tmp_path_factory):
    from aaclip.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("graphs")
    return {(m, p): export_onnx(ckpts[m], out / f"{m}.{p}.onnx", precision=p, model=models[m])
            for m in METHODS for p in ("fp32", "fp16")}


@pytest.mark.parametrize("method", METHODS)
def test_graph_matches_pytorch_at_fp32_and_fp16(exported, models, frames, method):
    from aaclip.export.onnx_export import compute_anchors, graph_problems
    from aaclip.export.verify import TOLERANCES, compare_outputs
    from aaclip.runtime.backends.onnxruntime import OnnxRuntimeRunner

    m = models[method]
    constants = compute_anchors(m, list(CLASSES))
    ids = np.array([1, 0, 1], np.int64)
    with torch.no_grad():
        maps, scores = zip(*(m.predict(_normalized(frames[i:i + 1]), constants[c]) for i, c in enumerate(ids)))
    amap = torch.cat(maps).numpy()
    ref = {"anomaly_map": amap, "map_max": amap.reshape(3, -1).max(1), "cls_score": torch.cat(scores).numpy()}
    reports = {}
    for precision in ("fp32", "fp16"):
        path = exported[(method, precision)].path
        proto = onnx.load(str(path))
        assert graph_problems(proto) == []
        ops = {n.op_type for n in proto.graph.node}
        assert not ops & {"Sort", "CumSum", "Loop", "If", "ScatterND"}  # nothing TensorRT cannot build
        assert all(a.s != b"reflect" for n in proto.graph.node if n.op_type == "Pad" for a in n.attribute)
        for n in proto.graph.node:  # TopK (Res2CLIP's top-1% scores) within TensorRT's K <= 3840
            if n.op_type == "TopK":
                k = [i for i in proto.graph.initializer if i.name == n.input[1]]
                assert not k or int(onnx.numpy_helper.to_array(k[0]).max()) <= 3840
        with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"]) as runner:
            out = {k: np.array(v) for k, v in runner.infer({"image": frames, "class_id": ids}).items()}
        reports[precision] = compare_outputs(ref, out, TOLERANCES[precision])
    fp32, fp16 = reports["fp32"], reports["fp16"]
    assert fp32.map_rel <= 1e-5 and fp32.cls_max_abs <= 1e-5, fp32.lines()
    assert fp16.passed and fp16.map_rel <= 2e-3 and fp16.cls_max_abs <= 1e-3, fp16.lines()
    assert fp16.map_rel > 0  # a half-precision computation, really
    if method.startswith("clip-ad"):  # the constants folded in: text anchors (C, E, 2)
        assert (2, 32, 2) in [tuple(i.dims) for i in onnx.load(str(exported[(method, "fp32")].path)).graph.initializer]


@pytest.mark.parametrize("method", METHODS)
def test_verify_gate_and_manifest(exported, ckpts, method):
    from aaclip.contract.manifest import load_manifest
    from aaclip.export.verify import VerifyOptions, verify_artifact
    from aaclip.train.families import get_family

    result = exported[(method, "fp32")]
    manifest = load_manifest(result.path)
    assert manifest.method == method and manifest.classes == CLASSES and manifest.class_input == "class_id"
    assert manifest.data["score"] == get_family(method).default_score(None).to_block("default")
    assert verify_artifact(result.path, ckpts[method], VerifyOptions(frames=2)).passed
    assert verify_artifact(exported[(method, "fp16")].path, ckpts[method], VerifyOptions(frames=2)).passed


@pytest.mark.parametrize("method", METHODS)
def test_tensorrt_rtx_builds_each_family(exported, tmp_path, method):
    pytest.importorskip("tensorrt_rtx", reason="pip install tensorrt-rtx-cu13")
    from aaclip.contract.manifest import check_artifact, load_manifest
    from aaclip.export import cli as export_cli

    graph = tmp_path / "g.onnx"
    src = exported[(method, "fp16")]
    graph.write_bytes(src.path.read_bytes())
    (tmp_path / "g.onnx.manifest.json").write_text(src.manifest.read_text())
    with pytest.raises(SystemExit) as exc:
        export_cli.main([str(graph), "--format", "engine", "--trt-flavour", "tensorrt-rtx", "--engine-batch", "1:1:2", "-q"])
    assert exc.value.code in (0, None)
    manifest = load_manifest(tmp_path / "g.engine")
    check_artifact(manifest)
    assert manifest.method == method and manifest.data["tensorrt"]["flavour"] == "tensorrt-rtx"
    assert (tmp_path / "g.engine").stat().st_size > 100_000


# ---- FLOPs: analytic counts equal torch's counter on the deploy graph -------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_flops_equal_torch_flop_counter(models, method):
    from aaclip.export.graph import DeployGraph
    from aaclip.export.onnx_export import compute_anchors
    from aaclip.train.families import get_family
    from torch.utils.flop_counter import FlopCounterMode

    m = models[method]
    graph = DeployGraph(m, compute_anchors(m, ["disk"])).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        graph(torch.randint(0, 256, (1, SIZE, SIZE, 3), dtype=torch.uint8))
    report = get_family(method).flops(m.config)
    assert report["breakdown"]["total"] == counter.get_total_flops()
    assert report["breakdown"]["vv_attention"] > 0
