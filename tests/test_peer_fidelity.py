"""The peer families' defaults reproduce their official code (issue 22), on the tiny config:

- OpenAI's TorchScript archives (``torch.jit.save`` of a traced float16 CLIP) load through ``--clip-weights``
  with a restricted unpickler; a pickle that asks for anything else (``os.system``) is refused unrun.
- CLIP-AD's default ``init`` + export from such a file computes what the official code computes, stage by
  stage, against an independent transcription (OpenCLIP's QuickGELU model as OpenAI's loader builds it, the
  official float16 anchor recipe, the official forward with its in-place trap, feature surgery, scipy's blur).
- Res2CLIP's and CLIP-AD's position-embedding resize and activation per size; older configs keep their meaning.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402
from aaclip.contract.errors import UserError  # noqa: E402
from aaclip.train.checkpoint import load_checkpoint  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from test_peer_ops import _clip_ad_official  # noqa: E402 - the official CLIP-AD forward, transcribed

NATIVE = 48  # aaclip-tiny's native size: "OpenAI's loader" territory for CLIP-AD
OTHER = 64
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EPS, MIN_SAMPLES = 0.3, 15  # DBSCAN settings that find a cluster among the tiny tower's sentence features


def _cli(args, code=0):
    from aaclip.train.train_cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, res.output + (res.stderr if res.stderr_bytes else "")
    return res.output if code == 0 else res.stderr.strip().splitlines()[-1]


def _random_clip(quick: bool, seed: int = 0):
    import open_clip
    from aaclip.train.common import backbone  # noqa: F401 - registers aaclip-tiny

    torch.manual_seed(seed)
    return open_clip.create_model("aaclip-tiny", force_quick_gelu=quick, device="cpu").eval()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny CLIP in the format of OpenAI's release: float16 tensors plus OpenAI's three extra entries,
    traced and written with ``torch.jit.save``. Returns (path, its tensors read back by torch.jit.load)."""
    root = tmp_path_factory.mktemp("openai")
    model = _random_clip(quick=True).half()
    for key, value in (("input_resolution", NATIVE), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(model, key):
            delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    image = torch.randn(1, 3, NATIVE, NATIVE).half()
    text = torch.zeros(1, 77, dtype=torch.long)
    traced = torch.jit.trace_module(model, {"encode_image": image, "encode_text": text}, check_trace=False)
    path = root / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    return path, {k: v.clone() for k, v in torch.jit.load(str(path)).state_dict().items()}


# ---- TorchScript archives, read without running them ------------------------------------------------------------
def test_archive_tensors_equal_torch_jit_load(archive):
    from aaclip.train.common.torchscript_archive import is_torchscript_archive, read_torchscript_tensors

    path, expected = archive
    with pytest.raises(Exception, match="TorchScript"):  # the file torch.load(weights_only=True) refuses
        torch.load(path, weights_only=True)
    got = read_torchscript_tensors(path)
    assert is_torchscript_archive(path)
    assert set(got) == set(expected) and len(got) > 100
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert got["visual.transformer.resblocks.3.attn.in_proj_weight"].dtype == torch.float16
    assert int(got["input_resolution"]) == NATIVE


def _evil_archive(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", payload)
        z.writestr("evil/constants.pkl", pickle.dumps(()))
        z.writestr("evil/version", "3\n")
    return path


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_a_malicious_archive_is_refused_before_anything_runs(tmp_path, archive, monkeypatch):
    from aaclip.train.common.torchscript_archive import read_torchscript_tensors

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = _evil_archive(tmp_path / "evil.pt", pickle.dumps({"x": _System(f"touch {marker}")}, protocol=2))
    with pytest.raises(UserError, match=r"refusing to load: its pickle asks for 'posix.system'"):
        read_torchscript_tensors(evil)
    err = _cli(["init", "--method", "clip-ad", "--backbone", "aaclip-tiny", "--clip-weights", evil, "--classes", "disk",
                "--out", tmp_path / "ckpt"], code=2)
    assert err.startswith(f"error: {evil}: refusing to load") and "may be malicious" in err
    assert not marker.exists() and not (tmp_path / "ckpt").exists()
    # a module record whose state smuggles a call in: the global is refused just the same
    payload = (b"\x80\x02c__torch__.model\nCLIP\n)\x81}X\x01\x00\x00\x00xcbuiltins\neval\nX\x0b\x00\x00\x00"
               b"print('hi')\x85Rsb.")
    with pytest.raises(UserError, match="'builtins.eval'"):
        read_torchscript_tensors(_evil_archive(tmp_path / "evil2.pt", payload))
    # an archive whose persistent id is not a storage of the archive
    payload = b"\x80\x02X\x01\x00\x00\x00x\x85Q."  # BINPERSID ('x',)
    with pytest.raises(UserError):
        read_torchscript_tensors(_evil_archive(tmp_path / "evil3.pt", payload))


@pytest.mark.parametrize("method, size, act, resize", [("clip-ad", NATIVE, "quickgelu", "bicubic-antialias"),
                                                       ("clip-ad", OTHER, "gelu", "bicubic-antialias"),
                                                       ("res2clip", OTHER, "quickgelu", "bilinear")])
def test_clip_weights_takes_the_archive_with_each_familys_backbone(archive, tmp_path, method, size, act, resize):
    """CLIP-AD: OpenAI's model (QuickGELU) at the native size, the plain config (GELU) and a bicubic-antialias
    position resize elsewhere; Res2CLIP: QuickGELU and a bilinear resize at every size. The loaded weights are
    the archive's (float16 values), the position embedding resized as the official code does."""
    path, expected = archive
    import cv2
    from aaclip.data import synth

    extra = []
    if method == "res2clip":
        (tmp_path / "refs" / "disk").mkdir(parents=True)
        image = synth.draw_product("disk", np.random.default_rng(0), size)
        cv2.imwrite(str(tmp_path / "refs" / "disk" / "0.png"), image)
        extra = ["--reference-images", tmp_path / "refs"]
    out = tmp_path / "ckpt"
    _cli(["init", "--method", method, "--backbone", "aaclip-tiny", "--clip-weights", path, "--image-size", size,
          "--classes", "disk", *extra, "--out", out, "-q"])
    backbone = json.loads((out / "config.json").read_text())["backbone"]
    assert (backbone["activation"], backbone["pos_embed_resize"]) == (act, resize)
    clip = load_checkpoint(out).clip
    assert type(clip.transformer.resblocks[0].mlp.gelu).__name__ == ("QuickGELU" if act == "quickgelu" else "GELU")
    state = clip.state_dict()
    for key in ("visual.transformer.resblocks.2.mlp.c_fc.weight", "token_embedding.weight", "text_projection"):
        assert torch.equal(state[key], expected[key].float())
    pos = expected["visual.positional_embedding"].float()
    if size == NATIVE:
        assert torch.equal(state["visual.positional_embedding"], pos)
    else:
        grid = pos[1:].reshape(1, 6, 6, -1).permute(0, 3, 1, 2)
        mode, antialias = ("bicubic", True) if resize == "bicubic-antialias" else ("bilinear", False)
        new = F.interpolate(grid, size=(8, 8), mode=mode, antialias=antialias, align_corners=False)
        want = torch.cat([pos[:1], new.permute(0, 2, 3, 1).reshape(64, -1)])
        assert torch.allclose(state["visual.positional_embedding"], want, atol=1e-6)


# ---- CLIP-AD against the official computation ------------------------------------------------------------------
def _official_anchors(clip, tokenizer, name: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``CA:util/prompt_ensemble.py`` with ``rep_vec='dbscan'`` on the CPU (float32 features): DBSCAN, numpy mean,
    ``torch.tensor(..., dtype=torch.float16)``, ``/= norm()`` in float16. Returns (E, 2) in float16 and, per
    column, (sentences in the chosen cluster, sentences)."""
    from aaclip.train.families.clip_ad.model import prompt_sentences
    from sklearn.cluster import DBSCAN

    cols, sizes = [], []
    for sentences in prompt_sentences(name):
        emb = clip.encode_text(tokenizer(sentences))
        emb /= emb.norm(dim=-1, keepdim=True)
        data = emb.cpu().numpy()
        dbscan = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES)
        dbscan.fit(data)
        labels = dbscan.labels_
        label = np.argmax(np.bincount(labels[labels >= 0]))
        vec = torch.tensor(np.mean(data[labels == label], axis=0), dtype=torch.float16).squeeze()
        vec /= vec.norm()
        cols.append(vec)
        sizes.append((int((labels == label).sum()), len(data)))
    return torch.stack(cols, dim=1), sizes


def _official_sdp(clip, images, T, sigma):
    """``CA:test.py`` on the CPU: encode_image's surgery features, clip_feature_surgery, get_similarity_map, scipy's
    gaussian_filter, the classification softmax."""
    from scipy.ndimage import gaussian_filter

    surgery, _ = _clip_ad_official(clip.visual, images)
    feats = [clip.visual.ln_post(s) @ clip.visual.proj for s in surgery]
    feats = [f / f.norm(dim=-1, keepdim=True) for f in feats]
    text = torch.stack([T] * len(images))  # (B, E, 2)
    similarity = 0
    for f in feats:
        prob = (f[:, :1, :] @ text).softmax(-1)
        w = prob / prob.mean(-1, keepdim=True)
        b, n_t, n_i, c = f.shape[0], text.shape[2], f.shape[1], f.shape[2]
        elem = f.reshape(b, n_i, 1, c) * text.permute(0, 2, 1).contiguous().reshape(b, 1, n_t, c)
        elem *= w.reshape(b, 1, n_t, 1)
        similarity = similarity + (elem - elem.mean(2, keepdim=True)).sum(-1)
    sm = similarity[:, 1:, :]
    side = int(sm.shape[1] ** 0.5)
    sm = F.interpolate(sm.reshape(b, side, side, -1).permute(0, 3, 1, 2), (NATIVE, NATIVE), mode="bilinear")
    amap = sm.permute(0, 2, 3, 1)[..., 1].numpy().astype(np.float64)
    amap = np.stack([gaussian_filter(m, sigma=sigma) for m in amap])
    cls = (100.0 * feats[-1] @ text)[:, 0, :].softmax(dim=-1)[:, 1]
    return feats, amap, cls.numpy()


def _frames(n=3):
    from aaclip.data import synth

    rng = np.random.default_rng(4)
    out = [synth.draw_product("disk", rng, NATIVE) for _ in range(n)]
    out[1], _ = synth.add_defect(out[1], rng)
    return np.stack(out)


def _official_input(frames_bgr):
    """torchvision's ToTensor + Normalize in float32, as the official loader feeds the model."""
    x = torch.from_numpy(np.ascontiguousarray(frames_bgr[..., ::-1])).permute(0, 3, 1, 2).float().div(255)
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


@pytest.fixture(scope="module")
def official(archive):
    """The official computation on the archive's weights: OpenAI's loader builds the QuickGELU model at the
    native size with float32 parameters holding the float16 values."""
    import open_clip

    path, expected = archive
    clip = _random_clip(quick=True, seed=1)
    state = {k: v.float() for k, v in expected.items() if k not in ("input_resolution", "context_length",
                                                                     "vocab_size", "attn_mask")}
    clip.load_state_dict(state, strict=True)
    tokenizer = open_clip.get_tokenizer("aaclip-tiny")
    frames = _frames()
    with torch.no_grad():
        T16, sizes = _official_anchors(clip, tokenizer, "disk")
        feats, amap, cls = _official_sdp(clip, _official_input(frames), T16.float(), sigma=2.0)
    assert all(0 < n < total for n, total in sizes)  # DBSCAN found a real cluster: not the plain mean
    return {"T16": T16, "feats": feats, "map": amap, "cls": cls, "frames": frames}


def _init_clip_ad(path, out, *extra):
    _cli(["init", "--method", "clip-ad", "--backbone", "aaclip-tiny", "--clip-weights", path, "--classes", "disk",
          "--image-size", NATIVE, "--set", f"dbscan_eps={EPS}", "--set", "sigma=2", *extra, "--out", out, "-q"])
    return load_checkpoint(out)


def _map_error(amap, official) -> float:
    ref = official["map"]
    return float(np.abs(np.asarray(amap, np.float64) - ref).max() / (ref.max() - ref.min()))


def test_clip_ad_defaults_compute_what_the_official_code_computes(archive, official, tmp_path):
    from aaclip.export.onnx_export import export_onnx
    from aaclip.runtime.backends.onnxruntime import OnnxRuntimeRunner

    path, _ = archive
    model = _init_clip_ad(path, tmp_path / "sdp")  # the defaults: no --activation, no anchor option
    config = json.loads((tmp_path / "sdp" / "config.json").read_text())
    assert config["anchor_precision"] == "float16" and config["backbone"]["activation"] == "quickgelu"
    # stage 1: the anchors, bitwise the official float16 ones (unit vectors only to float16 precision)
    T = model.class_constants(["disk"])[0]
    assert torch.equal(T, official["T16"].float())
    norms = T.double().norm(dim=0)
    assert (norms - 1).abs().max() > 1e-5  # the float16 normalization the official code does
    # stage 2: the four surgery features (token 0 = the original class token, in-place trap included)
    x = _official_input(official["frames"])
    with torch.no_grad():
        feats, _ = model.encode_image(x)
        amap, cls = model.predict(x, T)
    for ours, ref in zip(feats, official["feats"]):
        assert torch.allclose(ours, ref, atol=2e-6)
    # stage 3: map and score, PyTorch and the exported graph (uint8 BGR frames in)
    assert _map_error(amap.numpy(), official) <= 1e-5
    np.testing.assert_allclose(cls.numpy(), official["cls"], atol=1e-6)
    graph = export_onnx(tmp_path / "sdp", tmp_path / "sdp.onnx", precision="fp32", model=model).path
    with OnnxRuntimeRunner(graph, providers=["CPUExecutionProvider"]) as runner:
        out = {k: np.array(v) for k, v in runner.infer({"image": official["frames"]}).items()}
    assert _map_error(out["anomaly_map"], official) <= 1e-4
    np.testing.assert_allclose(out["cls_score"], official["cls"], atol=1e-5)


def test_clip_ad_options_change_what_they_say(archive, official, tmp_path):
    """The clean anchors (float32: exact unit vectors) and GELU move the map away from the official one."""
    path, _ = archive
    x = _official_input(official["frames"])
    errors = {}
    for name, extra in {"default": [], "float32": ["--set", "anchor_precision=float32"],
                        "gelu": ["--activation", "gelu"]}.items():
        model = _init_clip_ad(path, tmp_path / name, *extra)
        T = model.class_constants(["disk"])[0]
        with torch.no_grad():
            errors[name] = _map_error(model.predict(x, T)[0].numpy(), official)
        if name == "float32":
            assert torch.allclose(T.double().norm(dim=0), torch.ones(2, dtype=torch.float64), atol=1e-6)
            cos = F.cosine_similarity(T.double(), official["T16"].double(), dim=0)
            assert (1 - cos).max() < 1e-6 and not torch.equal(T, official["T16"].float())
    print("map error / range vs official:", errors)
    assert errors["default"] <= 1e-5
    assert errors["float32"] > 10 * errors["default"] and errors["gelu"] > 1e-3


def test_configs_without_the_new_fields_keep_their_meaning(archive, tmp_path):
    """A CLIP-AD checkpoint written before ``anchor_precision`` existed computes its anchors as it did (exact
    float64 mean, ``float32``); its recorded activation stays as recorded."""
    from aaclip.train.families.clip_ad.model import representative_vector

    path, _ = archive
    new = _init_clip_ad(path, tmp_path / "new")
    cfg_path = tmp_path / "new" / "config.json"
    data = json.loads(cfg_path.read_text())
    del data["anchor_precision"]
    data["backbone"]["activation"] = "gelu"  # as an older init recorded for a weights file
    cfg_path.write_text(json.dumps(data))
    old = load_checkpoint(tmp_path / "new")
    assert old.config.anchor_precision == "float32" and old.config.backbone.activation == "gelu"
    T_old = old.class_constants(["disk"])[0]
    assert not torch.equal(T_old, new.class_constants(["disk"])[0])
    assert torch.allclose(T_old.double().norm(dim=0), torch.ones(2, dtype=torch.float64), atol=1e-6)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(30, 8))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    legacy = data.mean(0) / np.linalg.norm(data.mean(0))
    np.testing.assert_array_equal(representative_vector(data, "mean", 0.5, 15, "x"), legacy)  # the old default


def test_family_parity_states_the_official_behaviours_each_config_reproduces(archive):
    from aaclip.benchmarks.family_parity import official_tables
    from aaclip.train.common.config import BackboneConfig
    from aaclip.train.families.clip_ad.config import ClipAdConfig
    from aaclip.train.families.res2clip.config import Res2ClipConfig
    from aaclip.train.fidelity import official_behaviours

    path, _ = archive

    def config(cls, size=NATIVE, activation=None, **fields):
        return cls(backbone=BackboneConfig(name="aaclip-tiny", weights=str(path), activation=activation),
                   image_size=size, **fields)

    def missed(cfg):
        return [b.what.split(" (")[0].split(":")[0] for b in official_behaviours(cfg) if not b.reproduced]

    test_set = "image score = test-set min-max of class score + of map maximum"
    assert missed(config(ClipAdConfig)) == [test_set]  # the defaults reproduce the rest
    assert missed(config(ClipAdConfig, OTHER)) == [test_set]  # GELU is the official choice off the native size
    assert missed(config(ClipAdConfig, anchor_precision="float32")) == [
        "cluster mean cast to float16 and normalized in float16", test_set]
    assert missed(config(ClipAdConfig, activation="gelu")) == ["backbone built by OpenAI's loader", test_set]
    assert missed(config(ClipAdConfig, OTHER, activation="quickgelu")) == ["backbone built by OpenCLIP's plain config",
                                                                           test_set]
    assert missed(config(Res2ClipConfig, OTHER)) == ["the official 1-shot reference lists"]
    assert missed(config(Res2ClipConfig, OTHER, shots=2)) == [
        "k = 1 normal reference per class", "the official 1-shot reference lists"]
    rows = [{"method": "clip-ad", "image_size": NATIVE,
             "official": [b.__dict__ for b in official_behaviours(config(ClipAdConfig, anchor_precision="float32"))]}]
    table = "\n".join(official_tables(rows))
    assert ("| cluster mean cast to float16 and normalized in float16 (anchor norms 1 +- 5e-4) | no | "
            "--set anchor_precision=float32 |") in table
    assert table.count("| yes |") == 6
