"""The PyTorch reference runner: a checkpoint's own ``predict`` behind the runner interface.

It takes the graph contract's inputs (uint8 NHWC BGR frames, class ids) and returns its outputs, computed
the way the method's reference code does: host pre-processing in float64 (``graph.reference_preprocess``:
the same PIL-bicubic resize weights as the graph when the artifact takes camera-resolution frames),
then ``model.predict`` with each image's class constants. The export verifier compares artifacts with
it and the benchmarks time it (``device`` cpu/cuda; ``precision`` fp16/bf16 runs under autocast on CUDA).

Registered as backend ``pytorch``: ``open_runner(manifest, "pytorch")`` runs the checkpoint an artifact was
exported from (``source.checkpoint`` in its manifest, or ``RunnerOptions.extra["model"]``).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest
from aaclip.contract.tensors import CLASS_INPUT_NAME, CLS_OUTPUT, INPUT_NAME, MAP_OUTPUT, MAX_OUTPUT, OUTPUT_NAMES
from aaclip.runtime.backends import Backend, RunnerOptions, register_backend
from aaclip.runtime.backends.base import Runner

REFERENCE_BACKEND = "pytorch"
AUTOCAST = ("fp16", "bf16")


class TorchReferenceRunner(Runner):
    """``model.predict`` on the training pre-processing; ``object_names`` are the artifact's classes in order."""

    name = REFERENCE_BACKEND

    def __init__(self, model, object_names: Sequence[str], input_hw: Sequence[int], *, device: str = "cpu",
                 precision: str = "fp32"):
        super().__init__()
        if precision not in ("fp32",) + AUTOCAST:
            raise UserError(f"the PyTorch reference runs fp32, fp16 or bf16, not {precision}")
        if precision != "fp32" and device != "cuda":
            raise UserError(f"PyTorch {precision} runs under autocast on CUDA only; use --device cuda or fp32")
        self.model = model
        self.object_names = list(object_names)
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.device = device
        self.precision = precision
        self._constants = None

    def activate_impl(self) -> None:
        from .onnx_export import compute_anchors

        self.model.to(self.device)
        self._constants = compute_anchors(self.model, self.object_names).to(self.device)
        multi = len(self.object_names) > 1
        self.input_names = (INPUT_NAME, CLASS_INPUT_NAME) if multi else (INPUT_NAME,)
        self.output_names = OUTPUT_NAMES

    def infer_impl(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        import torch

        from .graph import reference_preprocess

        frames = np.asarray(feeds[INPUT_NAME])
        n = len(frames)
        ids = np.asarray(feeds[CLASS_INPUT_NAME]) if CLASS_INPUT_NAME in self.input_names else np.zeros(n, np.int64)
        size = int(self.model.config.image_size)
        x = reference_preprocess(frames, self.input_hw, size).to(self.device)
        amap = np.zeros((n, size, size), np.float32)
        cls = np.zeros(n, np.float32)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device if self.device != "cpu" else "cpu", dtype=dtype,
                                                    enabled=dtype is not None):
            for c in np.unique(ids):
                idx = np.flatnonzero(ids == c)
                m, s = self.model.predict(x[idx], self._constants[int(c)])
                amap[idx] = m.float().cpu().numpy()
                cls[idx] = s.float().cpu().numpy()
        result = {MAP_OUTPUT: amap, MAX_OUTPUT: amap.reshape(n, -1).max(axis=1), CLS_OUTPUT: cls}
        return {k: result[k] for k in outputs}

    def deactivate_impl(self) -> None:
        self.model.to("cpu")
        self._constants = None


def reference_for(manifest: Manifest, options: Optional[RunnerOptions] = None) -> TorchReferenceRunner:
    """The reference runner of an artifact: its checkpoint (or ``options.extra['model']``), its classes and input
    size; ``options.extra['precision']`` for autocast rows."""
    options = options or RunnerOptions()
    model = options.extra.get("model")
    if model is None:
        from aaclip.train.checkpoint import load_checkpoint

        ckpt = options.extra.get("checkpoint") or manifest.checkpoint
        if not ckpt:
            raise UserError(f"{manifest.artifact_path.name} records no checkpoint: pass the checkpoint (--checkpoint)")
        model = load_checkpoint(ckpt, clip_weights=options.extra.get("clip_weights"))
    device = "cpu" if options.device == "auto" else options.device
    return TorchReferenceRunner(model, manifest.object_names, (manifest.height, manifest.width), device=device,
                                precision=options.extra.get("precision", "fp32"))


register_backend(Backend(
    name=REFERENCE_BACKEND, formats=("onnx", "engine"), create=reference_for,
    installed=lambda: True, install_hint="pip install 'aaclip-edge[train]'", auto_rank=1000,
    description="the checkpoint's PyTorch model (reference for parity checks and benchmarks)"))
