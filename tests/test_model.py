"""AA-CLIP model core on a tiny random OpenCLIP config: adapters, anchors, map math, backbone, V-V."""
import math

import pytest
import torch
import torch.nn.functional as F
from aaclip.train.common import maps
from aaclip.train.families.aa_clip.adapters import ResidualAdapter, blend
from aaclip.train.checkpoint import build_model
from aaclip.train.common.constants import default_levels
from aaclip.train.common.prompts import prompt_sentences
from aaclip.train.common.vv_attention import stage1_visual_features, vv_block
from model_fixtures import TINY_SIZE, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return build_model(tiny_config(seed=0)).eval()


def test_adapter_output_has_input_norm_and_blend_formula():
    torch.manual_seed(0)
    adapter = ResidualAdapter(8)
    x = torch.randn(2, 5, 8) * 3
    y = adapter(x)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    w = adapter.fc.weight
    raw = F.leaky_relu(x @ w.T, 0.01)
    expected_y = raw * x.norm(dim=-1, keepdim=True) / raw.norm(dim=-1, keepdim=True)
    assert torch.allclose(y, expected_y, atol=1e-6)
    assert torch.allclose(blend(adapter, x, 0.1), 0.1 * expected_y + 0.9 * x, atol=1e-6)
    assert adapter.fc.bias is None


def test_levels_scale_with_depth():
    assert default_levels(24) == (6, 12, 18, 24)
    assert default_levels(12) == (3, 6, 9, 12)
    assert default_levels(4) == (1, 2, 3, 4)
    cfg = tiny_config()
    assert cfg.resolved_depths(12, 24) == (3, 6)
    assert cfg.resolved_depths(12, 12) == (3, 3)


def test_prompt_ensemble_counts_and_text():
    normal, abnormal = prompt_sentences("metal nut")
    assert len(normal) == 6 and len(abnormal) == 10
    assert "a photo of the metal nut." in normal and "metal nut." in normal
    assert "a metal nut with defect." in abnormal and "a photo of a broken metal nut." in abnormal


def test_anchors_are_normalized_means_of_normalized_sentences(model):
    T = model.text_anchors(["metal disk", "wooden board"])
    assert T.shape == (2, model.clip.visual.output_dim, 2)
    assert torch.allclose(T.norm(dim=1), torch.ones(2, 2), atol=1e-5)
    normal, abnormal = prompt_sentences("wooden board")
    with torch.no_grad():
        f = F.normalize(model.encode_text(model.tokenizer(abnormal)), dim=-1)
    assert torch.allclose(T[1, :, 1], F.normalize(f.mean(0), dim=-1), atol=1e-5)


def test_zero_lambda_image_tower_equals_openclip(model):
    """With lambda = 0 the adapted tower is CLIP itself: the last tap + ln_post gives OpenCLIP's tokens."""
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    lam, model.lam = model.lam, 0.0
    try:
        taps = []
        model.seg_proj[-1].fc.weight.data, saved = torch.eye(64, 64)[: model.clip.visual.output_dim], model.seg_proj[-1].fc.weight.data.clone()
        with torch.no_grad():
            V, _ = model.encode_image(x)
            model.clip.visual.output_tokens = True
            _, tokens = model.clip.visual(x)
            model.clip.visual.output_tokens = False
        expected = F.normalize(tokens[..., : model.clip.visual.output_dim], dim=-1)
        assert torch.allclose(V[-1], expected, atol=1e-5)
    finally:
        model.lam = lam
        model.seg_proj[-1].fc.weight.data = saved


def test_text_tower_with_zero_lambda_equals_openclip(model):
    tokens = model.tokenizer(["a photo of a disk.", "wood."])
    lam, model.lam = model.lam, 0.0
    saved = model.text_proj.fc.weight.data.clone()
    try:
        model.text_proj.fc.weight.data = model.clip.text_projection.data.T.clone()
        with torch.no_grad():
            ours = model.encode_text(tokens)
            ref = F.leaky_relu(model.clip.encode_text(tokens), 0.01)
        assert torch.allclose(ours, ref, atol=1e-5)
    finally:
        model.lam = lam
        model.text_proj.fc.weight.data = saved


def test_position_embedding_resized_bicubic_antialias(tmp_path):
    from aaclip.train.common.backbone import build_clip, read_state_dict, write_random_weights

    write_random_weights("aaclip-tiny", tmp_path / "w.safetensors", seed=4)
    clip, _ = build_clip(tiny_config(weights=str(tmp_path / "w.safetensors")))
    old = read_state_dict(tmp_path / "w.safetensors")["visual.positional_embedding"]
    assert old.shape[0] == 6 * 6 + 1
    grid = old[1:].reshape(1, 6, 6, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    want = torch.cat([old[:1], want.permute(0, 2, 3, 1).reshape(64, -1)])
    assert torch.allclose(clip.visual.positional_embedding, want, atol=1e-6)


# ---- map math on constructed features (SPEC section 5) ------------------------------------------------
def _basis_anchors(e: int) -> torch.Tensor:
    T = torch.zeros(e, 2)
    T[0, 0] = 1.0  # normal anchor = e0
    T[1, 1] = 1.0  # abnormal anchor = e1
    return T


def test_uniform_abnormal_tokens_give_known_map():
    e, g = 4, 6
    T = _basis_anchors(e)
    V = torch.zeros(1, g * g, e)
    V[..., 1] = 1.0  # every token is the abnormal anchor: S = (0, 100)
    m = maps.level_map(V, T, g)
    assert torch.allclose(m, torch.full((1, g, g), 50.5))
    M = maps.anomaly_map([V, V, V, V], T, g, (24, 24), "industrial")
    assert M.shape == (1, 24, 24)
    assert torch.allclose(M, torch.full((1, 24, 24), 4 * 50.5), atol=1e-4)
    V[..., 1] = 0.0
    V[..., 0] = 1.0  # all normal: (0 + 1 - 100) / 2 per level
    assert torch.allclose(maps.anomaly_map([V], T, g, (12, 12), "industrial"), torch.full((1, 12, 12), -49.5), atol=1e-4)


def test_single_abnormal_token_is_blurred_with_gaussian_and_upsampled_align_corners():
    e, g = 4, 9
    T = _basis_anchors(e)
    V = torch.zeros(1, g * g, e)
    V[..., 0] = 1.0
    V[0, 4 * g + 4] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # centre token abnormal
    m = maps.level_map(V, T, g)
    assert m[0, 4, 4] == pytest.approx(50.5) and m[0, 0, 0] == pytest.approx(-49.5)
    blurred = maps.gaussian_blur(m, 7, 1.0)
    k = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / 2)
    k = k / k.sum()
    # centre: -49.5 everywhere plus 100 * k0 * k0 at the abnormal token
    assert blurred[0, 4, 4].item() == pytest.approx(-49.5 + 100 * k[3].item() ** 2, rel=1e-5)
    assert blurred[0, 4, 6].item() == pytest.approx(-49.5 + 100 * k[3].item() * k[5].item(), rel=1e-5)
    up = maps.upsample(blurred, (33, 33))  # (9-1)*4+1: grid points land exactly on pixels
    assert torch.allclose(up[0, ::4, ::4], blurred[0], atol=1e-4)
    assert up[0, 16, 16].item() == pytest.approx(blurred[0, 4, 4].item(), rel=1e-5)


def test_blur_is_reflect_padded_and_medical_kernel():
    m = torch.zeros(1, 10, 10)
    m[0, 0, 0] = 1.0
    b = maps.gaussian_blur(m, 9, 1.5)
    k = maps.gaussian_kernel1d(9, 1.5)
    # reflect padding mirrors without repeating the edge: the corner pixel is not counted twice,
    # and the mirrored copy of column 1 feeds column 0 (zero or replicate padding would differ)
    assert b[0, 0, 0].item() == pytest.approx(k[4].item() ** 2, rel=1e-5)
    assert b[0, 0, 2].item() == pytest.approx(k[4].item() * k[2].item(), rel=1e-5)
    m2 = torch.zeros(1, 10, 10)
    m2[0, 0, 1] = 1.0
    b2 = maps.gaussian_blur(m2, 9, 1.5)
    assert b2[0, 0, 0].item() == pytest.approx(k[4].item() * (k[3].item() + k[5].item()), rel=1e-5)
    assert k.sum().item() == pytest.approx(1.0)


def test_cls_score_and_training_probabilities():
    T = _basis_anchors(4)
    d = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]])
    assert torch.allclose(maps.cls_score(d, T), torch.tensor([1.0, 0.9]))
    V = torch.zeros(1, 4, 4)
    V[0, :, 1] = 0.01  # S = (0, 1)
    P = maps.train_probabilities(V, T, 2, (5, 5))
    assert torch.allclose(P.sum(1), torch.ones(1, 5, 5))
    assert torch.allclose(P[0, 1], torch.full((5, 5), 1 / (1 + math.exp(-1))), atol=1e-6)


def test_per_image_anchors_batched(model):
    T = model.text_anchors(["metal disk", "wooden board"])
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        m_batched, c_batched = model.predict(x, T[torch.tensor([0, 1])])
        m0, c0 = model.predict(x[:1], T[0])
        m1, c1 = model.predict(x[1:], T[1])
    assert torch.allclose(m_batched[0], m0[0], atol=1e-4) and torch.allclose(m_batched[1], m1[0], atol=1e-4)
    assert torch.allclose(c_batched, torch.cat([c0, c1]), atol=1e-6)


# ---- stage-1 V-V attention --------------------------------------------------------------------------
def test_vv_reference_mode_with_batch_one_is_the_value_path(model):
    block = model.clip.visual.transformer.resblocks[-1]
    x = torch.randn(1, 5, 64)
    with torch.no_grad():
        out = vv_block(block, x, "reference")
        h = block.ln_1(x)
        w = block.attn.in_proj_weight[128:]
        b = block.attn.in_proj_bias[128:]
        value = block.attn.out_proj(F.linear(h, w, b))
        y = x + value
        expected = y + block.mlp(block.ln_2(y))
    assert torch.allclose(out, expected, atol=1e-5)


def test_vv_modes_mix_batch_or_tokens(model):
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    x2 = x.clone()
    x2[1] = torch.randn(3, TINY_SIZE, TINY_SIZE)
    levels = model.levels
    ref_a = stage1_visual_features(model.clip, x, levels, 3, "reference")
    ref_b = stage1_visual_features(model.clip, x2, levels, 3, "reference")
    tok_a = stage1_visual_features(model.clip, x, levels, 3, "tokens")
    tok_b = stage1_visual_features(model.clip, x2, levels, 3, "tokens")
    # reference: image 0's features depend on image 1 (attention across the batch); tokens: they do not
    assert not torch.allclose(ref_a[-1][0], ref_b[-1][0], atol=1e-4)
    assert torch.allclose(tok_a[-1][0], tok_b[-1][0], atol=1e-5)
    assert len(ref_a) == 4 and ref_a[0].shape == (2, 64, model.clip.visual.output_dim)
