"""Res2CLIP (SPEC-peers.md section 2) on OpenCLIP: training-free (Res2CLIP*) and fine-tuned (Res2CLIP-dagger).

What the official code computes (``R2:`` = hito2448/Res2CLIP@8bf2218; its DPAM backbone is AnomalyCLIP's):

- Features (``encode``): the DPAM stream (``dual_path.dpam_streams``, V-V path from the first tap block,
  input residual kept, never reset) at the quarter-depth taps, ``ln_post`` + ``proj``, class token
  dropped, L2-normalized: F_l (B, L, E). Global feature g: the ORIGINAL stream's class token after the
  last block times ``proj`` without ``ln_post``, L2-normalized.
- Text residual (``text_residual``): 15 templates; "object" with 5 normal states ("" perfect flawless
  clean undamaged) and 2 anomalous phrasings ("damaged object", "object with damaged"); per set the mean
  of the normalized sentence features, normalized; R_t = L2norm(t_a - t_n). Fine-tuned: R~_t =
  L2norm(A_t(R_t)), R~res_t = L2norm(A_res_t(R_t)); training-free both are R_t.
- Matching (``residual``): sim = F_l bank_l^T (L x kL) minus 0.01 |r_query - r_ref| (radial distances from
  the grid centre in patches), sparsemax weights, matched = L2norm(w bank_l), R_v = F_l - matched.
- Maps: text F_last . R~_t (last tap); visual ||R_v|| or ||A_vis(R_v)|| (all taps); residual
  max(0, R_v . R_t) (last tap) or max(0, A_res(R_v) . R~res_t) (all taps, fine-tuned); each branch the mean
  over its taps, bilinear up (align_corners False), 5x5 zero-padded blur; M = 0.1 M_text + M_vis +
  (1 or 0.1) M_res, blurred again (``anomaly_map``).
- Score: top1(X) = mean of the largest 1% of a blurred branch map; s_text = 0.5 top1(M_text) + 0.5 g.R~_t,
  s_vis = top1(M_vis), s_res = 0.5 top1(M_res) + 0.5 max(0, A(g - g_ref) . R~res_t); score = s_text +
  s_vis + (1 or 0.1) s_res: ``cls_score``, a per-frame score (the manifest's ``map_weight`` is 0).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from aaclip.contract.errors import UserError
from torch import nn

from aaclip.train.common.constants import default_levels
from aaclip.train.common.dual_path import dpam_streams
from aaclip.train.families.base import FamilyModel
from aaclip.train.families.res2clip.config import BLUR_SIGMA, BLUR_SIZE, TOP_FRACTION, check_object_names
from aaclip.train.common.peer_ops import TENSORRT_TOPK_MAX, sparsemax, top_mean, zero_padded_blur, zero_padded_kernel

log = logging.getLogger(__name__)

TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a cropped photo of a {}.", "a cropped photo of the {}.",
             "a close-up photo of a {}.", "a close-up photo of the {}.", "the {} in the image.", "the {} in the scene.",
             "an image of a {}.", "an image of the {}.", "a rendering of a {}.", "a photo of one {}.",
             "showing the {}.", "showing a {}.", "itap of a {}.")
NOUN = "object"
NORMAL_STATES = ("", "perfect", "flawless", "clean", "undamaged")
TEXT_WEIGHT = 0.1
RES_WEIGHT_FINETUNED = 0.1
OFFICIAL_KEYS = ("vis_adapters", "res_vis_local_adapters", "res_vis_global_adapter", "res_text_adapter",
                 "text_adapter")
BANK = "reference_bank"


def text_sentences() -> tuple[list[str], list[str]]:
    """(75 normal, 30 anomalous) sentences of the text residual (``R2:models/clip.py``); the empty state's
    double space is what the tokenizer's whitespace cleaning collapses."""
    normal = [t.format(f"{s} {NOUN}".strip()) for s in NORMAL_STATES for t in TEMPLATES]
    anomalous = [t.format(p) for p in (f"damaged {NOUN}", f"{NOUN} with damaged") for t in TEMPLATES]
    return normal, anomalous


class ResidualAdapter(nn.Module):
    """x + W2 GELU(W1 LN(x)), no biases, W2 zero-initialized (``R2:models/adapter.py``)."""

    def __init__(self, embed: int, reduction: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(embed)
        self.fc1 = nn.Linear(embed, embed // reduction, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(embed // reduction, embed, bias=False)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class MultiScaleConvAdapter(nn.Module):
    """Tokens -> LN, down, ReLU, depthwise 3x3 (dilation 1 and 2) on the patch grid, concat, LN, blend, ReLU,
    up (zero-initialized), added to the input (``R2:models/adapter.py``)."""

    def __init__(self, embed: int, grid: int, reduction: int = 4):
        super().__init__()
        d = embed // reduction
        self.grid, self.down_dim = grid, d
        self.norm = nn.LayerNorm(embed)
        self.down = nn.Linear(embed, d, bias=False)
        self.act_down = nn.ReLU()
        self.conv_fine = nn.Conv2d(d, d, kernel_size=3, padding=1, groups=d, bias=False)
        self.conv_coarse = nn.Conv2d(d, d, kernel_size=3, padding=2, dilation=2, groups=d, bias=False)
        self.internal_norm = nn.LayerNorm(d * 3)
        self.blend = nn.Linear(d * 3, d, bias=False)
        self.act_fuse = nn.ReLU()
        self.up = nn.Linear(d, embed, bias=False)
        nn.init.zeros_(self.up.weight)
        nn.init.kaiming_normal_(self.conv_fine.weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_normal_(self.conv_coarse.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, d = self.grid, self.down_dim
        x2d = self.act_down(self.down(self.norm(x))).transpose(1, 2).reshape(-1, d, g, g)
        multi = torch.cat([x2d, self.conv_fine(x2d), self.conv_coarse(x2d)], dim=1)
        multi = multi.reshape(-1, 3 * d, g * g).transpose(1, 2)
        return x + self.up(self.act_fuse(self.blend(self.internal_norm(multi))))


def radial_distances(grid: int) -> torch.Tensor:
    """Distance of each patch (row-major) from the grid centre ((G-1)/2, (G-1)/2), in patches, (L,)."""
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    c = (grid - 1) / 2.0
    return torch.sqrt((x.flatten().float() - c) ** 2 + (y.flatten().float() - c) ** 2)


class Res2Clip(FamilyModel):
    """Res2CLIP on a frozen OpenCLIP; ``reference_bank`` (C, T k L + 1, E) holds each class's references."""

    def __init__(self, clip: nn.Module, tokenizer, config):
        super().__init__(clip, config)
        self.tokenizer = tokenizer
        visual = clip.visual
        depth = len(visual.transformer.resblocks)
        self.taps = default_levels(depth)
        self.start = self.taps[0]
        self.grid = int(visual.grid_size[0])
        self.patches = self.grid * self.grid
        self.embed = int(visual.output_dim)
        self.shots = int(config.shots)
        self.finetuned = bool(config.finetuned)
        self.res_taps = tuple(config.res_taps or (self.taps if self.finetuned else self.taps[-1:]))
        if not set(self.res_taps) <= set(self.taps):
            raise UserError(f"res_taps {list(self.res_taps)} must be among the taps {list(self.taps)}")
        size = int(config.image_size)
        self.top_k = max(1, int(size * size * TOP_FRACTION))
        if self.top_k > TENSORRT_TOPK_MAX:
            log.warning("the top-1%% score takes %d values at %d px: TensorRT's TopK stops at %d", self.top_k, size,
                        TENSORRT_TOPK_MAX)
        self._text: Optional[torch.Tensor] = None  # R_t of the frozen text tower, computed once
        self.register_buffer(BANK, torch.zeros(len(config.classes), self.bank_rows, self.embed))
        self.register_buffer("radius", radial_distances(self.grid), persistent=False)
        self.register_buffer("blur_kernel", zero_padded_kernel(BLUR_SIZE, BLUR_SIGMA), persistent=False)
        if self.finetuned:
            self.init_adapters()

    def init_adapters(self, seed: Optional[int] = None) -> None:
        """(Re)create the fine-tuned adapters, as the official code does, from ``seed`` (None: the current RNG)."""
        if seed is not None:
            torch.manual_seed(seed)
        r, device = int(self.config.reduction), self.radius.device
        self.vis_adapters = nn.ModuleDict({str(t): MultiScaleConvAdapter(self.embed, self.grid, r) for t in self.taps})
        self.res_vis_local_adapters = nn.ModuleDict(
            {str(t): MultiScaleConvAdapter(self.embed, self.grid, r) for t in self.res_taps})
        self.res_vis_global_adapter = ResidualAdapter(self.embed, r)
        self.res_text_adapter = ResidualAdapter(self.embed, r)
        self.text_adapter = ResidualAdapter(self.embed, r)
        for name in ("vis_adapters", "res_vis_local_adapters", "res_vis_global_adapter", "res_text_adapter",
                     "text_adapter"):
            getattr(self, name).to(device)

    @property
    def bank_rows(self) -> int:
        """Rows of one class's bank: k L per tap, then g_ref."""
        return len(self.taps) * self.shots * self.patches + 1

    def adapter_parameters(self, *names: str) -> list[nn.Parameter]:
        return [p for n in names for p in getattr(self, n).parameters()]

    # ---- features -------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Normalized images -> ([F_l (B, L, E) per tap], g (B, E))."""
        visual = self.clip.visual
        taps, x = dpam_streams(visual, images, self.start, self.taps)
        feats = [F.normalize(visual.ln_post(t[:, 1:]) @ visual.proj, dim=-1) for t in taps]
        return feats, F.normalize(x[:, 0] @ visual.proj, dim=-1)

    @torch.no_grad()
    def text_residual(self) -> torch.Tensor:
        """R_t (E,): the class-agnostic text residual of the frozen text tower."""
        device = self.clip.visual.proj.device
        if self._text is None:
            means = []
            for sentences in text_sentences():
                feats = F.normalize(self.clip.encode_text(self.tokenizer(sentences).to(device)).float(), dim=-1)
                means.append(F.normalize(feats.mean(dim=0), dim=-1))
            self._text = F.normalize(means[1] - means[0], dim=-1).cpu()
        return self._text.to(device)

    def adapted_text(self, rt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R~_t, R~res_t) from R_t: through the adapters when fine-tuned, else R_t itself."""
        if not self.finetuned:
            return rt, rt
        return F.normalize(self.text_adapter(rt), dim=-1), F.normalize(self.res_text_adapter(rt), dim=-1)

    # ---- references -----------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_rows(self, images: torch.Tensor) -> torch.Tensor:
        """One class's bank (T k L + 1, E) from its k normalized reference images (k, 3, S, S)."""
        if images.shape[0] != self.shots:
            raise UserError(f"the bank takes exactly {self.shots} reference image(s) per class, got {images.shape[0]}")
        feats, g = self.encode(images)
        rows = [f.reshape(-1, self.embed) for f in feats]  # shots concatenated along the tokens, per tap
        rows.append(F.normalize(g.mean(dim=0), dim=-1)[None])
        return torch.cat(rows).float()

    def set_references(self, banks: dict[str, torch.Tensor], object_names: Optional[dict[str, str]] = None) -> None:
        """Install per-class banks (``reference_rows``); new classes join ``config.classes`` (object name from
        ``object_names`` or the class name)."""
        classes = dict(self.config.classes)
        for name in banks:
            classes.setdefault(name, (object_names or {}).get(name, name))
        current = getattr(self, BANK)
        old = dict(zip(self.config.classes, current))
        rows = [banks[c].to(current.device) if c in banks else old[c] for c in classes]
        table = torch.stack(rows) if rows else current
        check_object_names(classes)
        self.config.classes = classes
        self.register_buffer(BANK, table.contiguous())

    def bank_bytes(self) -> int:
        """float32 bytes of one class's bank (what each class adds to a graph)."""
        return (self.bank_rows + 2) * self.embed * 4

    def class_constants(self, object_names: Sequence[str]) -> torch.Tensor:
        """(C, T k L + 3, E): each class's bank, g_ref, then R~_t and R~res_t."""
        by_object = {o: i for i, o in enumerate(self.config.classes.values())}
        missing = [o for o in object_names if o not in by_object]
        if missing:
            raise UserError(f"no reference bank for {missing[0]!r}: add its normal references with `aaclip-train "
                            f"references CKPT --reference-images DIR` (classes with banks: "
                            f"{', '.join(self.config.classes) or 'none'})")
        bank = getattr(self, BANK)[[by_object[o] for o in object_names]]
        rt_text, rt_res = self.adapted_text(self.text_residual())
        text = torch.stack([rt_text, rt_res]).to(bank.device)
        return torch.cat([bank, text.expand(bank.shape[0], 2, self.embed)], dim=1)

    def split_constants(self, constants: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
        """One class's (R, E) or per-image (B, R, E) constants -> ([bank_l], g_ref, R~_t, R~res_t)."""
        n = self.shots * self.patches
        banks = [constants[..., i * n:(i + 1) * n, :] for i in range(len(self.taps))]
        end = len(self.taps) * n
        return banks, constants[..., end, :], constants[..., end + 1, :], constants[..., end + 2, :]

    # ---- matching and maps ----------------------------------------------------------------------------
    def residual(self, feat: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """R_v = F - L2norm(sparsemax(F bank^T - penalty) bank); bank (k L, E) or (B, k L, E)."""
        r_ref = self.radius.repeat(bank.shape[-2] // self.patches)
        penalty = self.config.spatial_penalty * torch.abs(self.radius[:, None] - r_ref[None, :])
        weights = sparsemax(torch.matmul(feat, bank.transpose(-2, -1)) - penalty, self.config.sparsemax_steps)
        return feat - F.normalize(torch.matmul(weights, bank), dim=-1)

    def vis_score(self, tap: int, rv: torch.Tensor) -> torch.Tensor:
        return torch.norm(self.vis_adapters[str(tap)](rv) if self.finetuned else rv, dim=-1)

    def res_score(self, tap: int, rv: torch.Tensor, rt_res: torch.Tensor) -> torch.Tensor:
        """A_res(R_v) . R~res_t per token, not clamped (the training losses use it raw)."""
        adapted = self.res_vis_local_adapters[str(tap)](rv) if self.finetuned else rv
        return (adapted * rt_res.unsqueeze(-2)).sum(-1)

    def _branch(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Mean over taps of (B, L) maps, up-sampled and blurred: (B, 1, S, S)."""
        m = torch.stack(maps).mean(dim=0).reshape(-1, 1, self.grid, self.grid)
        size = (self.config.image_size, self.config.image_size)
        return zero_padded_blur(F.interpolate(m, size=size, mode="bilinear", align_corners=False), self.blur_kernel)

    def predict(self, images: torch.Tensor, constants: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, g = self.encode(images)
        banks, g_ref, rt_text, rt_res = self.split_constants(constants)
        text, vis, res = [], [], []
        for tap, feat, bank in zip(self.taps, feats, banks):
            rv = self.residual(feat, bank)
            vis.append(self.vis_score(tap, rv))
            if tap in self.res_taps:
                res.append(torch.relu(self.res_score(tap, rv, rt_res)))
        text.append((feats[-1] * rt_text.unsqueeze(-2)).sum(-1))
        m_text, m_vis, m_res = self._branch(text), self._branch(vis), self._branch(res)
        w_res = RES_WEIGHT_FINETUNED if self.finetuned else 1.0
        amap = zero_padded_blur(TEXT_WEIGHT * m_text + m_vis + w_res * m_res, self.blur_kernel)[:, 0]
        rv_cls = g - g_ref
        if self.finetuned:
            rv_cls = self.res_vis_global_adapter(rv_cls)
        s_text = 0.5 * top_mean(m_text.flatten(1), self.top_k) + 0.5 * (g * rt_text).sum(-1)
        s_vis = top_mean(m_vis.flatten(1), self.top_k)
        s_res = 0.5 * top_mean(m_res.flatten(1), self.top_k) + 0.5 * torch.relu((rv_cls * rt_res).sum(-1))
        return amap, s_text + s_vis + w_res * s_res


# ---- references from files --------------------------------------------------------------------------------
def build_references(model: Res2Clip, paths: dict[str, list[Path]], batch: int = 4) -> dict[str, torch.Tensor]:
    """Banks of the classes in ``paths`` (exactly ``shots`` image files each), PIL bicubic pre-processing."""
    from aaclip.train.common.preprocess import load_rgb, normalize, to_unit_tensor

    size = int(model.config.image_size)
    device = model.clip.visual.proj.device
    out = {}
    for name, files in paths.items():
        images = torch.stack([normalize(to_unit_tensor(load_rgb(p, size))) for p in files]).to(device)
        out[name] = model.reference_rows(images)
        log.info("reference bank of %s: %d image(s), %.1f MB", name, len(files), out[name].numel() * 4 / 1e6)
    return out


# ---- official adapter checkpoints ---------------------------------------------------------------------------
def official_state(path: Path) -> dict[str, torch.Tensor]:
    """Our adapter state from an official Res2CLIP checkpoint ({"vis_adapters": ..., ...})."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {path} safely ({exc.__class__.__name__}): is it a Res2CLIP checkpoint?") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in OFFICIAL_KEYS[:2]):
        raise UserError(f"{path} has no 'vis_adapters' / 'res_vis_local_adapters' state dicts: expected a checkpoint "
                        "saved by Res2CLIP's train.py")
    state = {}
    for key in OFFICIAL_KEYS:
        if key not in data:  # the official loader treats the last three as optional: they stay identity
            log.warning("%s has no '%s': keeping the identity initialization (zero output layer)", path, key)
            continue
        state.update({f"{key}.{k}": v.float() for k, v in data[key].items()})
    return state


def import_official(src: Path, out_dir: Path, config) -> Path:
    """Convert an official Res2CLIP checkpoint (.pth) into a ``res2clip-ft`` checkpoint folder without
    classes; add each class's references with ``aaclip-train references``."""
    from aaclip.train.common.backbone import build_on_backbone
    from aaclip.train.common.checkpoint_files import save_checkpoint

    if config.method != "res2clip-ft":
        raise UserError(f"official Res2CLIP checkpoints hold adapters: use --method res2clip-ft, not {config.method}")
    src = Path(src)
    if not src.is_file():
        raise UserError(f"{src} is not a file: pass the checkpoint_ep<N>.pth that Res2CLIP's train.py wrote")
    state = official_state(src)
    local = sorted({int(k.split(".")[1]) for k in state if k.startswith("res_vis_local_adapters.")})
    if local:
        config.res_taps = local
    if config.classes:
        log.warning("classes are added with their references (`aaclip-train references`): ignoring --classes")
        config.classes = {}
    model = build_on_backbone(config, Res2Clip, base_dir=Path(out_dir))
    expected = {k: v for k, v in model.trainable_state_dict().items() if k != BANK}
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise UserError(f"{src}: {unknown[0]!r} does not fit this backbone's taps {list(model.taps)} "
                        f"(expected keys like {sorted(expected)[0]!r})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f"{src}: {key} is {tuple(value.shape)}, but backbone {config.backbone.name} needs "
                            f"{tuple(expected[key].shape)}")
    for key in OFFICIAL_KEYS:  # a state dict that is there must be complete (the official loader is strict)
        given = {k for k in state if k.startswith(key + ".")}
        wanted = {k for k in expected if k.startswith(key + ".")}
        if given and given != wanted:
            raise UserError(f"{src}: '{key}' does not fit: missing {sorted(wanted - given)[:3]}, unexpected "
                            f"{sorted(given - wanted)[:3]}")
    full = model.trainable_state_dict()
    full.update(state)
    model.load_trainable_state_dict(full)
    log.info("imported %s (%d tensors); add references: aaclip-train references %s --reference-images DIR", src,
             len(state), out_dir)
    return save_checkpoint(model, out_dir)


__all__ = ["Res2Clip", "ResidualAdapter", "MultiScaleConvAdapter", "radial_distances", "text_sentences",
           "build_references", "official_state", "import_official", "BANK"]
