"""Speed-up of each reduced-precision CPU row over ONNX Runtime FP32, next to the bound the measured matmul peaks
give (``peaks.speedup_bound``: e.g. INT8 peak / FP32 peak), and the fraction of that bound reached.

A fraction above 100% of a peak or of a bound cannot be a property of the model: the peak was read low (a probe
sample in a burst of load from other jobs). Such rows get ``measurement_flag`` and the report prints the flag,
not the fraction.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .peaks import speedup_bound
from .report import speedup

REDUCED = ("fp16", "bf16", "int8")


def apply_bounds(rows: Sequence[dict], cpu_peaks: Optional[dict], plans: Optional[dict] = None) -> None:
    """Fill ``speedup_vs_ort_fp32``, ``speedup_bound``, ``fraction_of_bound``, ``bound_source``,
    ``measurement_flag`` (and the searched plan's summary and gate map error, ``plans``: precision -> outcome)
    of every ok row, in place."""
    plans = plans or {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        flags = []
        if row.get("fraction_of_peak") is not None and row["fraction_of_peak"] > 1.0:
            flags.append(f"{100 * row['fraction_of_peak']:.0f}% of the {row['precision']} peak")
        ratio = speedup(row, rows)
        row["speedup_vs_ort_fp32"] = ratio
        plan = plans.get(row["precision"])
        if plan and row["device"] == "cpu" and (plan.get("backend") in (None, row["backend"])
                                                or row["precision"] == "int8"):
            row["precision_plan"] = plan.get("summary")
            row["plan_map_err"] = plan.get("map_err")
        bound = speedup_bound(row["precision"], cpu_peaks) if row["device"] == "cpu" else None
        if ratio is not None and bound is not None and row["precision"] in REDUCED:
            row["speedup_bound"], row["bound_source"] = bound
            row["fraction_of_bound"] = ratio / bound[0]
            if row["fraction_of_bound"] > 1.0:
                flags.append(f"speed-up {ratio:.2f}x is {100 * row['fraction_of_bound']:.0f}% of the bound "
                             f"{bound[0]:.2f}x")
        if flags:
            row["measurement_flag"] = "; ".join(flags) + ": above 100%, a measurement error (the peak read low)"


__all__ = ["apply_bounds", "REDUCED"]
