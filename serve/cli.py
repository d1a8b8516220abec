"""``aaclip-serve``: serve an artifact (or a model repository from ``aaclip-export --format triton``) with a real
Triton Inference Server, NVIDIA PyTriton's bundled ``tritonserver``, on machines without NVIDIA's container.

    aaclip-serve model.onnx                       # gRPC 127.0.0.1:8001, HTTP :8000, metrics :8002, model "aaclip"
    aaclip-serve models/aaclip --host 0.0.0.0     # a model repository: its config.pbtxt sets name and batching
    aaclip-runtime grpc://127.0.0.1:8001/aaclip --camera 0

The model is the artifact's own runner (ONNX Runtime for graphs, TensorRT for engines) behind PyTriton's
Python backend, with the names, tensors, dynamic batching and manifest parameters of the model repository
export (``aaclip.contract.served``), so the runtime's ``triton`` backend cannot tell the two apart. PyTriton's
pip package carries no ONNX Runtime or TensorRT *server* backend: NVIDIA's container runs the exported
repository itself (docs/deploy-triton.md).

PyTriton pins numpy < 2: run this from its own virtual environment (``.venv-serve``, made by .ci/run).
"""
from __future__ import annotations

import logging
import os
import signal
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import click
import numpy as np
from aaclip.contract.cli import Command, setup_logging
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest, open_artifact
from aaclip.contract.served import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_MODEL_NAME,
    ServedTensor,
    find_repository_model,
    model_parameters,
    served_inputs,
    served_outputs,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 1000


@dataclass(frozen=True)
class ServePlan:
    """What is served, and how (options of ``aaclip-serve``, or a model repository's ``config.pbtxt``)."""

    artifact: Path
    model_name: str = DEFAULT_MODEL_NAME
    max_batch: Optional[int] = None          # None: the engine profile's max, else DEFAULT_MAX_BATCH
    preferred_batches: tuple[int, ...] = ()
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    backend: str = "auto"                    # the runner behind the server (aaclip.runtime.backends)
    device: str = "auto"
    threads: Optional[int] = None


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    grpc_port: int = DEFAULT_GRPC_PORT
    http_port: int = DEFAULT_HTTP_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    workspace: Optional[Path] = None  # PyTriton's model store and server copy (None: a temporary folder)


# ---- what to serve -------------------------------------------------------------------------------------
def _config_tensors(entries) -> list[ServedTensor]:
    from tritonclient.grpc import model_config_pb2 as pb

    types = {"TYPE_UINT8": "uint8", "TYPE_INT64": "int64", "TYPE_FP32": "float32"}
    out = []
    for t in entries:
        dtype = types.get(pb.DataType.Name(t.data_type), pb.DataType.Name(t.data_type))
        out.append(ServedTensor(t.name, dtype, tuple(t.dims), tuple(t.reshape.shape) if t.HasField("reshape") else None))
    return out


def plan_from_repository(path: Path, overrides: dict) -> ServePlan:
    """A plan from a model repository (REPO or REPO/<model>): the newest version's model file, the name,
    max batch, dynamic batching and instance count of its config.pbtxt (parsed with Triton's own schema)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config_path, model_file = find_repository_model(path)
    try:
        config = text_format.Parse(config_path.read_text(encoding="utf-8"), pb.ModelConfig())
    except text_format.ParseError as exc:
        raise UserError(f"{config_path} is not a valid Triton model configuration: {exc}") from None
    manifest = open_artifact(model_file)
    for kind, have, want in (("input", _config_tensors(config.input), served_inputs(manifest)),
                             ("output", _config_tensors(config.output), served_outputs(manifest))):
        if sorted(have, key=lambda t: t.name) != sorted(want, key=lambda t: t.name):
            raise UserError(f"{config_path}: its {kind}s {have} differ from what {model_file.name}'s manifest "
                            f"describes {list(want)}; re-export the repository with aaclip-export --format triton")
    if config.max_batch_size < 1:
        raise UserError(f"{config_path}: max_batch_size {config.max_batch_size}; the runtime sends batches, so the "
                        "model must batch (re-export with aaclip-export --format triton)")
    fields = dict(artifact=model_file, model_name=config.name or config_path.parent.name,
                  max_batch=config.max_batch_size,
                  preferred_batches=tuple(config.dynamic_batching.preferred_batch_size),
                  max_queue_delay_us=int(config.dynamic_batching.max_queue_delay_microseconds),
                  instances=sum(g.count or 1 for g in config.instance_group) or 1)
    fields.update({k: v for k, v in overrides.items() if v is not None and k != "artifact"})
    return ServePlan(**fields)


def check_plan(plan: ServePlan, manifest: Manifest) -> ServePlan:
    """The plan with its max batch resolved, refused when the artifact cannot be served so."""
    from dataclasses import replace

    if manifest.batch_min > 1:
        raise UserError(f"{manifest.artifact_path.name}'s batch profile starts at {manifest.batch_min}, but Triton's "
                        "batcher sends batches from 1: rebuild the engine with --batch 1:OPT:MAX")
    top = plan.max_batch if plan.max_batch is not None else (manifest.batch_max or DEFAULT_MAX_BATCH)
    if manifest.batch_max is not None and top > manifest.batch_max:
        raise UserError(f"--max-batch {top} exceeds {manifest.artifact_path.name}'s batch profile (max "
                        f"{manifest.batch_max})")
    if top < 1 or plan.instances < 1 or plan.max_queue_delay_us < 0:
        raise UserError("--max-batch and --instances must be >= 1, --max-queue-delay-us >= 0")
    bad = [b for b in plan.preferred_batches if not 1 <= b <= top]
    if bad:
        raise UserError(f"preferred batch sizes {bad} are outside 1..{top} (the max batch)")
    return replace(plan, max_batch=top)


# ---- serving -------------------------------------------------------------------------------------------
def use_own_libpython() -> None:
    """PyTriton's Python-backend stub links ``libpython3.X.so``; the dynamic loader may find the system's
    (e.g. Debian's 3.11.2) before this interpreter's (pyenv's 3.11.7), whose standard library then fails in
    the stub (``'_thread.RLock' object has no attribute '_recursion_count'``). Put this interpreter's
    library folder first for the server process PyTriton starts."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        paths = [libdir] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(paths)


def infer_function(runner, manifest: Manifest) -> Callable:
    """PyTriton's batched inference callable for one model instance: served tensors in, the runner's out."""
    from pytriton.decorators import batch

    inputs, outputs = served_inputs(manifest), served_outputs(manifest)

    @batch
    def infer(**tensors: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {}
        for t in inputs:
            value = tensors[t.name]
            feeds[t.name] = value.reshape(value.shape[0], *t.reshape) if t.reshape is not None else value
        out = runner.infer(feeds, [t.name for t in outputs])
        n = feeds[inputs[0].name].shape[0]
        return {t.name: np.ascontiguousarray(out[t.name][:n]).reshape(n, *t.dims) for t in outputs}

    return infer


def _tensors(specs: Sequence[ServedTensor]) -> list:
    from pytriton.model_config import Tensor

    return [Tensor(name=t.name, dtype=np.dtype(t.dtype).type, shape=t.dims) for t in specs]


def publish_parameters(triton, model_name: str, parameters: dict[str, str]) -> None:
    """Add ``parameters`` (the manifest and its score constants) to the served model's configuration.

    PyTriton has no public setting for them: its model keeps the Triton configuration it generates, whose
    ``backend_parameters`` become the config's ``parameters``, until the model is loaded (``serve``). The
    serve tests read them back from the server, so a PyTriton that changes this fails there, not silently."""
    for model in triton._model_manager.models:  # noqa: SLF001 - see the docstring
        if model.model_name == model_name:
            model._get_triton_model_config().backend_parameters.update(parameters)  # noqa: SLF001
            return
    raise RuntimeError(f"PyTriton has no bound model {model_name!r}")


def serve(plan: ServePlan, listen: Listen) -> None:
    """Serve ``plan`` until SIGINT/SIGTERM (blocks)."""
    from aaclip.runtime.backends import RunnerOptions, open_runner

    manifest = open_artifact(plan.artifact)
    plan = check_plan(plan, manifest)
    use_own_libpython()
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig
        from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig
    except ImportError as exc:
        raise UserError(f"aaclip-serve needs NVIDIA PyTriton ({exc}): pip install 'aaclip-edge[serve]' in its own "
                        "virtual environment (it pins numpy < 2)") from None
    runners = [open_runner(manifest, plan.backend, RunnerOptions(device=plan.device, threads=plan.threads))
               for _ in range(plan.instances)]
    for runner in runners:
        runner.activate()
    config = TritonConfig(http_address=listen.host, http_port=listen.http_port, grpc_address=listen.host,
                          grpc_port=listen.grpc_port, metrics_address=listen.host, metrics_port=listen.metrics_port,
                          exit_timeout_secs=5)
    # statistics stay readable without PyTriton's access token, as in NVIDIA's container: clients and
    # aaclip-bench read the server's queue/compute split there; model control and shared memory stay restricted
    security = TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
    triton = Triton(config=config, security_config=security, workspace=listen.workspace)
    try:
        triton.bind(model_name=plan.model_name, infer_func=[infer_function(r, manifest) for r in runners],
                    inputs=_tensors(served_inputs(manifest)), outputs=_tensors(served_outputs(manifest)),
                    config=ModelConfig(max_batch_size=plan.max_batch, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=plan.max_queue_delay_us,
                        preferred_batch_size=list(plan.preferred_batches) or None)),
                    strict=True)
        publish_parameters(triton, plan.model_name, model_parameters(manifest.data))
        log.info("serving %s as %r (%s, max batch %d, %d instance(s)) on %s: gRPC %d, HTTP %d, metrics %d",
                 plan.artifact, plan.model_name, runners[0].name, plan.max_batch, plan.instances, listen.host,
                 listen.grpc_port, listen.http_port, listen.metrics_port)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
        triton.serve()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        triton.stop()
        for runner in runners:
            runner.deactivate()


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path(path_type=Path, exists=True))
@click.option("--model-name", default=None, help=f"Served model name [default: the repository's, else {DEFAULT_MODEL_NAME}].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, for cameras on the plant network).")
@click.option("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, show_default=True)
@click.option("--http-port", type=int, default=DEFAULT_HTTP_PORT, show_default=True)
@click.option("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, show_default=True)
@click.option("--max-batch", type=int, default=None,
              help=f"Largest batch the dynamic batcher forms [default: engine profile max, else {DEFAULT_MAX_BATCH}].")
@click.option("--preferred-batch", default=None, metavar="4,8", help="Preferred batch sizes of the dynamic batcher.")
@click.option("--max-queue-delay-us", type=int, default=None,
              help=f"How long the batcher waits to fill a batch [default: {DEFAULT_QUEUE_DELAY_US}].")
@click.option("--instances", type=int, default=None, help="Model instances (one runner each) [default: 1].")
@click.option("--backend", default="auto", show_default=True, help="Runner behind the server: auto, onnxruntime, tensorrt.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads per instance (ONNX Runtime).")
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="PyTriton's workspace (its model store) [default: a temporary folder, removed at exit].")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: the server's own log).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(artifact: Path, model_name: Optional[str], host: str, grpc_port: int, http_port: int, metrics_port: int,
         max_batch: Optional[int], preferred_batch: Optional[str], max_queue_delay_us: Optional[int],
         instances: Optional[int], backend: str, device: str, threads: Optional[int], workspace: Optional[Path],
         verbose: int, quiet: bool) -> None:
    """Serve ARTIFACT (model.onnx / model.engine with its manifest, or a model repository folder) with Triton
    Inference Server until Ctrl-C or SIGTERM."""
    setup_logging(verbose, quiet)
    if verbose < 2:
        logging.getLogger("pytriton").setLevel(logging.WARNING)
    try:
        preferred = tuple(int(t) for t in preferred_batch.split(",") if t.strip()) if preferred_batch else None
    except ValueError:
        raise UserError(f"--preferred-batch {preferred_batch!r}: give batch sizes separated by commas") from None
    overrides = dict(model_name=model_name, max_batch=max_batch, preferred_batches=preferred,
                     max_queue_delay_us=max_queue_delay_us, instances=instances, backend=backend, device=device,
                     threads=threads)
    if artifact.is_dir():
        plan = plan_from_repository(artifact, overrides)
    else:
        plan = ServePlan(artifact=artifact, **{k: v for k, v in overrides.items() if v is not None})
    serve(plan, Listen(host, grpc_port, http_port, metrics_port, workspace))


if __name__ == "__main__":
    main()
