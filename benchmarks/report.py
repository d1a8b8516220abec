"""Writing a benchmark result: JSON (everything), CSV (one line per row), Markdown tables and a PNG plot.

A row is a flat dict with the keys of ``ROW_COLUMNS`` (scalars only), so the CSV and the JSON's ``rows``
hold the same values. Files are written atomically.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from aaclip.contract.files import atomic_path, atomic_write_json, atomic_write_text

from .loop_timing import STAGES

ROW_COLUMNS = (
    "key", "backend", "backend_label", "device", "device_name", "precision", "batch", "status", "reason",
    "artifact", "artifact_size_mb", "reps", "warmup",
    "images_per_s", "ms_per_image", "latency_mean_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "latency_min_ms", "latency_max_ms",
    "parity", "parity_passed", "parity_map_rel", "parity_cls_abs",
    "flops_per_image", "achieved_tflops", "peak_tflops", "fraction_of_peak", "peak_source",
    "speedup_vs_ort_fp32", "speedup_bound", "fraction_of_bound", "bound_source", "measurement_flag", "precision_plan",
    "plan_map_err",
    "host_peak_rss_mb", "host_memory_method", "device_mem_mb", "device_memory_method",
    "loop_status", "loop_reason", "loop_frames", "loop_images_per_s", "loop_ratio", "loop_overhead",
    "loop_non_inference_share",
    "loop_latency_p50_ms", "loop_latency_p95_ms", "loop_latency_p99_ms",
    *(f"loop_{s}_ms_per_image" for s in STAGES),
    "clients", "server_queue_ms", "server_compute_ms", "server_batch_mean",
)
FILE_NAMES = {"json": "benchmark.json", "csv": "benchmark.csv", "markdown": "benchmark.md", "plot": "benchmark.png"}


def empty_row() -> dict[str, Any]:
    return {k: None for k in ROW_COLUMNS}


# ---- CSV -----------------------------------------------------------------------------------------
def csv_text(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ROW_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else _csv_value(row[k]) for k in ROW_COLUMNS})
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    return repr(v) if isinstance(v, float) else v  # repr: shortest text that reads back to the same float


# ---- Markdown ------------------------------------------------------------------------------------
def _num(v: Optional[float], digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}" if abs(v) >= 1 or v == 0 else f"{v:.{digits + 1}g}"


def _pct(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{100.0 * v:.2f}%" if abs(v) < 0.01 else f"{100.0 * v:.1f}%"


def _fraction(v: Optional[float]) -> str:
    """A fraction of a peak or bound; above 100% it is a measurement error (the peak read low), not a result."""
    if v is None:
        return "-"
    return f"n/a: {_pct(v)} > 100%, measurement error" if v > 1.0 else _pct(v)


def _tflops(row: dict) -> str:
    if row.get("achieved_tflops") is None:
        return "-"
    text = f"{row['achieved_tflops']:.3g}"
    return text + (f" ({_fraction(row['fraction_of_peak'])})" if row.get("fraction_of_peak") is not None else "")


def _parity(row: dict) -> str:
    if row.get("parity") is None:
        return "-"
    return row["parity"]


def _served(row: dict) -> bool:
    return bool(row.get("clients"))


def served_table(rows: Sequence[dict]) -> list[str]:
    head = ("| Backend | Server device | Precision | Clients | FPS (all clients) | p50 (ms) | p95 (ms) | p99 (ms) "
            "| Server queue (ms) | Server compute (ms) | Mean server batch | Parity vs FP32 |")
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in rows:
        if r["status"] != "ok":
            continue
        lines.append("| " + " | ".join([
            r["backend_label"], r["device"], r["precision"], str(r["clients"]), _num(r["images_per_s"]),
            _num(r["latency_p50_ms"]), _num(r["latency_p95_ms"]), _num(r["latency_p99_ms"]),
            _num(r.get("server_queue_ms")), _num(r.get("server_compute_ms")), _num(r.get("server_batch_mean")),
            _parity(r),
        ]) + " |")
    return lines


BASELINE = ("onnxruntime", "cpu", "fp32")
"""The row every CPU row's speed is compared with (same batch): ONNX Runtime FP32 on the CPU."""


def speedup(row: dict, rows: Sequence[dict]) -> Optional[float]:
    """Median latency of the baseline row (same batch) over this row's; None without a baseline."""
    if row.get("status") != "ok" or row.get("device") != BASELINE[1]:
        return None
    for r in rows:
        if (r["backend"], r["device"], r["precision"]) == BASELINE and r["batch"] == row["batch"] \
                and r["status"] == "ok" and row.get("latency_p50_ms"):
            return r["latency_p50_ms"] / row["latency_p50_ms"]
    return None


def results_table(rows: Sequence[dict]) -> list[str]:
    head = ("| Backend | Device | Precision | Batch | Status | Size (MB) | Parity vs FP32 | ms/image | FPS "
            "| min (ms) | median (ms) | p95 (ms) | p99 (ms) | vs ORT FP32 | TFLOP/s (of peak) | Host RSS peak (MB) "
            "| Device mem (MB) |")
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in rows:
        ok = r["status"] == "ok"
        ratio = speedup(r, rows)
        lines.append("| " + " | ".join([
            r["backend_label"], r["device"], r["precision"], str(r["batch"]), r["status"],
            _num(r.get("artifact_size_mb"), 1), _parity(r) if ok else "-",
            _num(r.get("ms_per_image")) if ok else "-", _num(r.get("images_per_s")) if ok else "-",
            _num(r.get("latency_min_ms")) if ok else "-",
            _num(r.get("latency_p50_ms")) if ok else "-", _num(r.get("latency_p95_ms")) if ok else "-",
            _num(r.get("latency_p99_ms")) if ok else "-", f"{_num(ratio)}x" if ratio else "-",
            _tflops(r) if ok else "-",
            _num(r.get("host_peak_rss_mb"), 0) if ok else "-", _num(r.get("device_mem_mb"), 0) if ok else "-",
        ]) + " |")
    return lines


def reduced_table(rows: Sequence[dict]) -> list[str]:
    """Reduced-precision CPU rows: speed-up over ONNX Runtime FP32 against the bound the measured peaks give."""
    head = ("| Backend | Precision | Batch | Plan | Map error / range | Speed-up vs ORT FP32 | Bound (peaks) "
            "| Fraction of bound |")
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in rows:
        if r.get("speedup_bound") is None or r.get("status") != "ok":
            continue
        err = r.get("plan_map_err") if r.get("plan_map_err") is not None else r.get("parity_map_rel")
        lines.append("| " + " | ".join([
            r["backend_label"], r["precision"], str(r["batch"]), r.get("precision_plan") or "-", _pct(err),
            f"{_num(r['speedup_vs_ort_fp32'])}x", f"{_num(r['speedup_bound'])}x", _fraction(r["fraction_of_bound"]),
        ]) + " |")
    return lines


def loop_table(rows: Sequence[dict]) -> list[str]:
    head = ("| Backend | Device | Precision | Batch | Loop FPS | Raw FPS | Loop / raw | Overhead | Non-inference | decode "
            "| preprocess | inference | post/overlay | other | p50 (ms) | p95 (ms) | p99 (ms) |")
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in rows:
        if r.get("loop_status") != "ok":
            continue
        lines.append("| " + " | ".join([
            r["backend_label"], r["device"], r["precision"], str(r["batch"]), _num(r["loop_images_per_s"]),
            _num(r["images_per_s"]), _pct(r["loop_ratio"]), _pct(r["loop_overhead"]),
            _pct(r["loop_non_inference_share"]),
            *(_num(r[f"loop_{s}_ms_per_image"]) for s in STAGES),
            _num(r["loop_latency_p50_ms"]), _num(r["loop_latency_p95_ms"]), _num(r["loop_latency_p99_ms"]),
        ]) + " |")
    return lines


def markdown_text(result: dict) -> str:
    rows = result["rows"]
    env, model, settings = result["environment"], result["model"], result["settings"]
    gpu = env["gpu"]
    lines = [
        f"# aaclip-bench: {model['description']}", "",
        f"- date: {env['date']}",
        f"- command: `{settings['command']}`",
        f"- CPU: {env['cpu']['name']} ({env['cpu']['logical_cores']} logical cores); "
        f"GPU: {gpu['name'] or 'none'}" + (f" (driver {gpu['driver']})" if gpu.get("driver") else ""),
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v),
        f"- rows timed interleaved: {settings['warmup']} warm-up then {settings['reps']} timed round-robin rounds, "
        "one call per row per round; latencies are per call (one batch), FPS = batch / mean latency; "
        "vs ORT FP32 = median latency of ONNX Runtime CPU FP32 (same batch) / the row's",
        f"- FLOPs per image: {model['flops_per_image'] / 1e9:.4g} GFLOP ({model['flops']['convention']})",
        "", "## Backends", "",
        "Parity vs FP32: the export verifier's comparison with the FP32 PyTorch reference on "
        f"{settings['parity_frames']} frames; map = max |anomaly map error| / map range, cls = max |cls_score "
        "error|; PASS/FAIL against the precision's tolerances.", "",
        *results_table([r for r in rows if not _served(r)]),
    ]
    reduced = reduced_table(rows)
    if len(reduced) > 2:
        lines += ["", "## Reduced precision against its bound", "",
                  "Speed-up = median latency of ONNX Runtime CPU FP32 (same batch) / the row's; bound = the measured "
                  "matmul peak of the row's precision / the measured FP32 peak (what the speed-up would be if every "
                  "FLOP ran at peak); fraction = speed-up / bound. Map error: the accuracy gate's (max |map - FP32| / "
                  "FP32 range, held-out frames) for searched plans, else the parity check's.", "", *reduced]
    flagged = [r for r in rows if r.get("measurement_flag")]
    if flagged:
        lines += ["", "Measurement errors (a fraction above 100% means the peak was read low, e.g. the probe "
                  "ran in a burst of load):", ""] + [f"- {r['key']}: {r['measurement_flag']}" for r in flagged]
    served = [r for r in rows if _served(r)]
    if any(r["status"] == "ok" for r in served):
        lines += ["", "## Served by Triton Inference Server (concurrent clients)", "",
                  "N clients (threads, one triton runner each) send one frame per request like N cameras; FPS = all "
                  "timed frames / wall time, latency per request as a client sees it; queue and compute are the "
                  "server's own mean per request over the same window (statistics endpoint), mean batch = "
                  "images / executions of the model.", "", *served_table(served)]
    looped = [r for r in rows if r.get("loop_status") == "ok"]
    if looped:
        lines += ["", "## End-to-end runtime loop (video file, offline no-drop mode)", "",
                  "Stage columns are ms per image; Loop / raw = loop FPS over the raw backend FPS of the same "
                  "row, overhead = 1 - that ratio (both sides carry timing noise); non-inference = share of the "
                  "loop's wall time outside the inference call (decode, preprocess, post/overlay, other).", "", *loop_table(rows)]
    notes = [r for r in rows if r["status"] != "ok" or r.get("loop_status") in ("failed",)]
    if notes:
        lines += ["", "## Rows not measured", ""]
        for r in notes:
            if r["status"] != "ok":
                lines.append(f"- {r['key']}: {r['status']}: {r['reason']}")
            else:
                lines.append(f"- {r['key']} loop: failed: {r['loop_reason']}")
    peaks = sorted({(r["device"], r["precision"], r["peak_tflops"], r["peak_source"]) for r in rows
                    if r["status"] == "ok" and r.get("peak_source")}, key=str)
    if peaks:
        lines += ["", "## Peaks used for the fraction of peak", ""]
        lines += [f"- {d} {p}: {t:g} TFLOP/s: {s}" for d, p, t, s in peaks]
    probe = env.get("cpu_peaks")
    if probe:
        m, k, n = probe["shape"]
        lines += ["", f"CPU matmul probe ({m}x{k} @ {k}x{n}, best of {probe['reps']} samples, one per timing round, "
                  f"{probe['seconds']} s in all): "
                  + ", ".join(f"{name} {rate:.3g} TFLOP/s" for name, rate in probe["probes"].items())]
    return "\n".join(lines) + "\n"


# ---- plot ----------------------------------------------------------------------------------------
def write_plot(rows: Sequence[dict], path: Path, title: str) -> Optional[Path]:
    """Throughput and p95 latency against batch size, one line per backend/device/precision."""
    ok = [r for r in rows if r["status"] == "ok" and not _served(r)]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for r in ok:
        series.setdefault(f"{r['backend_label']} {r['device']} {r['precision']}", []).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rs in series.items():
        rs = sorted(rs, key=lambda r: r["batch"])
        xs = [r["batch"] for r in rs]
        ax1.plot(xs, [r["images_per_s"] for r in rs], marker="o", label=label)
        ax2.plot(xs, [r["latency_p95_ms"] for r in rs], marker="o", label=label)
    for ax, ylabel in ((ax1, "images / s"), (ax2, "p95 latency per call (ms)")):
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({r["batch"] for r in ok}))
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def write_outputs(result: dict, out_dir: Path, plot: bool = True) -> dict[str, Path]:
    """Write JSON, CSV, Markdown (and the plot) into ``out_dir``; returns the paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / v for k, v in FILE_NAMES.items()}
    atomic_write_json(paths["json"], result)
    atomic_write_text(paths["csv"], csv_text(result["rows"]))
    atomic_write_text(paths["markdown"], markdown_text(result))
    written = {k: paths[k] for k in ("json", "csv", "markdown")}
    if plot and write_plot(result["rows"], paths["plot"], result["model"]["description"]) is not None:
        written["plot"] = paths["plot"]
    return written


__all__ = ["ROW_COLUMNS", "FILE_NAMES", "empty_row", "csv_text", "results_table", "served_table", "loop_table", "reduced_table",
           "markdown_text",
           "write_plot", "write_outputs"]
