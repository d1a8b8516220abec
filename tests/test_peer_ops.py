"""The peer methods' building blocks against hand-computed cases and literal transcriptions of the official code:
scipy's Gaussian, Res2CLIP's zero-padded blur, sort-free sparsemax, the dual-path block, CLIP-AD's and
Res2CLIP's V-V streams (with the official in-place behaviour) and the feature-surgery closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from aaclip.train.common.dual_path import DualPathBlock, dpam_streams, surgery_streams
from aaclip.train.common.peer_ops import (
    scipy_gaussian_blur,
    sparsemax,
    sparsemax_sorted,
    symmetric_index,
    top_mean,
    zero_padded_blur,
    zero_padded_kernel,
)


@pytest.fixture(scope="module")
def tiny_visual():
    """A random aaclip-tiny image tower at 64 px (4 blocks, width 64, 4 heads, 8 x 8 grid)."""
    import open_clip
    from aaclip.train.common import backbone  # noqa: F401 - registers aaclip-tiny

    torch.manual_seed(0)
    clip = open_clip.create_model("aaclip-tiny", force_image_size=64, device="cpu").eval()
    return clip.visual


# ---- blurs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [2.0, 8.0])
def test_blur_equals_scipy_gaussian_filter_reflect(sigma):
    from scipy.ndimage import gaussian_filter

    m = np.random.default_rng(0).normal(size=(2, 20, 23)).astype(np.float32)
    ours = scipy_gaussian_blur(torch.from_numpy(m), sigma).numpy()
    ref = np.stack([gaussian_filter(x.astype(np.float64), sigma=sigma, mode="reflect") for x in m])
    np.testing.assert_allclose(ours, ref, atol=2e-6)  # sigma 8: radius 32 > 23, the padding reflects twice
    assert symmetric_index(3, 4).tolist() == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]  # edge repeated, period 6


def test_zero_padded_blur_is_the_official_5x5_conv():
    from scipy.signal import convolve2d

    # R2:utils/metrics.py get_gaussian_kernel(5, 4): exp(-((x-2)^2 + (y-2)^2) / 32) / (32 pi), normalized
    xs = np.arange(5.0)
    k = np.exp(-((xs[:, None] - 2) ** 2 + (xs[None, :] - 2) ** 2) / 32.0) / (32.0 * math.pi)
    k /= k.sum()
    np.testing.assert_allclose(zero_padded_kernel(5, 4.0)[0, 0].numpy(), k, atol=1e-7)
    m = np.random.default_rng(1).normal(size=(1, 1, 12, 9)).astype(np.float32)
    ours = zero_padded_blur(torch.from_numpy(m), zero_padded_kernel(5, 4.0)).numpy()[0, 0]
    np.testing.assert_allclose(ours, convolve2d(m[0, 0], k, mode="same", boundary="fill"), atol=1e-6)
    assert abs(ours[0, 0]) < abs(m[0, 0, :3, :3]).max()  # zero padding darkens the borders


# ---- sparsemax -------------------------------------------------------------------------------------------
def test_sparsemax_hand_case():
    # sorted 1.0, 0.8, 0.1: k = 2 (1 + 2*0.8 > 1.8, 1 + 3*0.1 < 1.9), tau = (1.8 - 1) / 2 = 0.4
    z = torch.tensor([[0.8, 0.1, 1.0]])
    np.testing.assert_allclose(sparsemax(z).numpy(), [[0.4, 0.0, 0.6]], atol=1e-6)
    np.testing.assert_allclose(sparsemax_sorted(z).numpy(), [[0.4, 0.0, 0.6]], atol=1e-6)
    one = torch.tensor([[3.0, 0.5, 1.5]])  # a gap > 1: all the weight on the largest
    np.testing.assert_allclose(sparsemax(one).numpy(), [[1.0, 0.0, 0.0]], atol=1e-6)
    flat = torch.zeros(1, 4)  # ties: uniform
    np.testing.assert_allclose(sparsemax(flat).numpy(), [[0.25] * 4], atol=1e-6)


def test_sort_free_sparsemax_equals_the_sorted_one():
    rng = np.random.default_rng(2)
    # similarity-like rows over 5000 candidates: more than TensorRT's TopK limit of 3840
    z = torch.from_numpy(rng.normal(scale=0.05, size=(3, 7, 5000)).astype(np.float32))
    z[0, 0, :10] = 0.3  # ties at the top
    ours, ref = sparsemax(z), sparsemax_sorted(z)
    assert torch.allclose(ours, ref, atol=2e-6)
    assert torch.allclose(ours.sum(-1), torch.ones(3, 7), atol=1e-5)
    assert ((ours > 0).sum(-1) >= 1).all() and ((ours > 0).sum(-1) < 5000).all()  # sparse


def test_top_mean():
    x = torch.tensor([[1.0, 5.0, 3.0, 4.0], [0.0, -1.0, 2.0, 2.0]])
    assert top_mean(x, 2).tolist() == [4.5, 2.0]


# ---- the dual-path block ---------------------------------------------------------------------------------
def _vv_by_hand(block, x: torch.Tensor) -> torch.Tensor:
    """V-V attention written out per head: softmax(v v^T / sqrt(d)) v, heads concatenated, out_proj."""
    attn = block.attn
    w = attn.embed_dim
    h = block.ln_1(x)
    v = h @ attn.in_proj_weight[2 * w:].T + attn.in_proj_bias[2 * w:]
    d = w // attn.num_heads
    heads = []
    for i in range(attn.num_heads):
        vi = v[..., i * d:(i + 1) * d]
        heads.append(torch.softmax(vi @ vi.transpose(-2, -1) / math.sqrt(d), dim=-1) @ vi)
    return torch.cat(heads, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def test_dual_path_block_paths(tiny_visual):
    block = tiny_visual.transformer.resblocks[1]
    x = torch.randn(2, 65, 64)
    with torch.no_grad():
        mid, out, vv = DualPathBlock(block, 65)(x)
        ref_mid = x + block.attn(block.ln_1(x), block.ln_1(x), block.ln_1(x), need_weights=False)[0]
        assert torch.allclose(out, block(x), atol=1e-5)  # the original path is OpenCLIP's block
        assert torch.allclose(mid, ref_mid, atol=1e-5)
        assert torch.allclose(vv, _vv_by_hand(block, x), atol=1e-5)
        assert DualPathBlock(block, 65)(x, vv=False)[2] is None


# ---- the two V-V streams: literal transcriptions of the official forwards ------------------------------------
def _official_attention(block, x_lnd: torch.Tensor):
    """CA/AnomalyCLIP ``Attention.forward`` on (N, B, W) input (transposed there): [vv, original]."""
    attn = block.attn
    x = x_lnd.transpose(0, 1)
    b, n, c = x.shape
    heads = attn.num_heads
    qkv = (x @ attn.in_proj_weight.T + attn.in_proj_bias).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = (c // heads) ** -0.5
    x_ori = ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ v
    x_vv = ((v @ v.transpose(-2, -1)) * scale).softmax(-1) @ v
    proj = attn.out_proj
    vv = (x_vv.transpose(1, 2).reshape(b, n, c) @ proj.weight.T + proj.bias).transpose(0, 1)
    ori = (x_ori.transpose(1, 2).reshape(b, n, c) @ proj.weight.T + proj.bias).transpose(0, 1)
    return vv, ori


def _clip_ad_official(visual, images):
    """``CA:open_clip/transformer.py`` ResidualAttentionBlock/Transformer/VisionTransformer.forward, in place."""
    x = visual._embeds(images).permute(1, 0, 2)  # LND
    blocks = visual.transformer.resblocks
    n = len(blocks)
    layers = [n // 4 * (j + 1) for j in range(4)]
    out = []
    for count, r in enumerate(blocks):
        if isinstance(x, list):
            xs, x_ori = x
            x_res, x_ori_res = _official_attention(r, r.ln_1(x_ori))
            if count % (n / 4) == 0 and count != 0:
                xs = x_res
            else:
                xs += x_res
            x_ori += x_ori_res  # the in-place add that rewrites the previous tap's stored tensor
            x_ori = x_ori + r.mlp(r.ln_2(x_ori))
            x = [xs, x_ori]
        else:
            x_res, x_ori_res = _official_attention(r, r.ln_1(x))
            x_ori = x + x_ori_res
            x_ori = x_ori + r.mlp(r.ln_2(x_ori))
            x = [x_res, x_ori]
        if count + 1 in layers:
            out.append(x)
    surgery, original = [], []
    for xs, x_ori in out:
        xs = xs.clone()
        xs[0, :, :] = x_ori[0, :, :]
        surgery.append(xs.permute(1, 0, 2))
        original.append(x_ori.permute(1, 0, 2))
    return surgery, original


def test_clip_ad_streams_equal_the_official_forward_with_its_in_place_trap(tiny_visual):
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        surgery, original = surgery_streams(tiny_visual, images)
        ref_s, ref_o = _clip_ad_official(tiny_visual, images)
        # the stage sums by hand: stage length 1 on 4 blocks, so s_j is block j's V-V output alone
        x = tiny_visual._embeds(images)
        mids, vvs = [], []
        for block in tiny_visual.transformer.resblocks:
            mid, nxt, vv = DualPathBlock(block, 65)(x)
            mids.append(mid)
            vvs.append(vv)
            x = nxt
    for j in range(4):
        assert torch.allclose(torch.cat([original[j][:, :1], surgery[j][:, 1:]], 1), ref_s[j], atol=1e-5)
        assert torch.allclose(original[j], ref_o[j], atol=1e-5)
        assert torch.allclose(surgery[j], vvs[j], atol=1e-6)
    for j in range(3):  # taps 1..3 read the NEXT block's mid (x_b + attn_{b+1}), the last one x_N
        assert torch.allclose(original[j], mids[j + 1], atol=1e-6)
    assert torch.allclose(original[3], x, atol=1e-6)
    assert (original[0] - mids[0]).abs().max() > 1e-2  # the trap changes the values


def test_clip_ad_stage_sums_over_two_blocks():
    """8 blocks: each stage's surgery feature is the sum of its 2 blocks' V-V outputs (restart per stage)."""
    import open_clip
    from aaclip.train.common import backbone  # noqa: F401

    torch.manual_seed(1)
    cfg = open_clip.get_model_config("aaclip-tiny")
    cfg["vision_cfg"] = dict(cfg["vision_cfg"], layers=8)
    visual = open_clip.CLIP(**cfg).visual.eval()
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        surgery, _ = surgery_streams(visual, images)
        ref_s, _ = _clip_ad_official(visual, images)
        x = visual._embeds(images)
        vvs = []
        for block in visual.transformer.resblocks:
            _, x, vv = DualPathBlock(block, 37)(x)
            vvs.append(vv)
    for j in range(4):
        assert torch.allclose(surgery[j], vvs[2 * j] + vvs[2 * j + 1], atol=1e-5)
        assert torch.allclose(surgery[j][:, 1:], ref_s[j][:, 1:], atol=1e-5)


def test_res2clip_dpam_stream_equals_anomalyclip_forward(tiny_visual):
    """``AnomalyCLIP_lib`` dual path from block ``start``: s = x + vv at the start (residual kept), then s += vv."""
    images = torch.randn(2, 3, 64, 64)
    start, taps = 2, (2, 3, 4)
    with torch.no_grad():
        ours, x_last = dpam_streams(tiny_visual, images, start, taps)
        x = tiny_visual._embeds(images).permute(1, 0, 2)
        ref = []
        for idx, r in enumerate(tiny_visual.transformer.resblocks, start=1):
            if idx < start:
                x = r(x.permute(1, 0, 2)).permute(1, 0, 2)
            elif not isinstance(x, list):
                x_res, x_ori_res = _official_attention(r, r.ln_1(x))
                x_ori = x + x_ori_res
                x_ori = x_ori + r.mlp(r.ln_2(x_ori))
                x = [x + x_res, x_ori]
            else:
                xs, x_ori = x
                x_res, x_ori_res = _official_attention(r, r.ln_1(x_ori))
                x_ori = x_ori + x_ori_res
                x_ori = x_ori + r.mlp(r.ln_2(x_ori))
                x = [xs + x_res, x_ori]
            if idx in taps:
                ref.append(x[0].permute(1, 0, 2).clone())
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(x_last, x[1].permute(1, 0, 2), atol=1e-5)
    with pytest.raises(ValueError, match="must not precede"):
        dpam_streams(tiny_visual, images, 3, (2, 4))


# ---- feature surgery ---------------------------------------------------------------------------------------
def test_feature_surgery_closed_form():
    """``CA:util/surgery.py`` clip_feature_surgery (w = p / mean(p), element-wise features minus their mean over
    the classes, summed) equals p_a (F T_a) - p_n (F T_n) on the anomaly channel."""
    from aaclip.train.families.clip_ad.model import surgery_map

    rng = np.random.default_rng(3)
    feats = [F.normalize(torch.from_numpy(rng.normal(size=(2, 10, 8)).astype(np.float32)), dim=-1) for _ in range(4)]
    T = F.normalize(torch.from_numpy(rng.normal(size=(8, 2)).astype(np.float32)), dim=0)
    total = 0
    for f in feats:
        prob = (f[:, :1, :] @ T).softmax(-1)  # (B, 1, 2)
        w = prob / prob.mean(-1, keepdim=True)
        elem = f.reshape(2, 10, 1, 8) * T.T.reshape(1, 1, 2, 8) * w.reshape(2, 1, 2, 1)
        total = total + (elem - elem.mean(2, keepdim=True)).sum(-1)
    ours = surgery_map(feats, T)
    assert torch.allclose(ours, total[:, 1:, 1], atol=1e-6)
    assert torch.allclose(total[:, :, 0], -total[:, :, 1], atol=1e-6)  # the normal channel is its negative
