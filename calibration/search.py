"""The accuracy-aware search shared by INT8 and mixed BF16: which parts of the image tower may run in low
precision while the accuracy gate still holds.

Units. The tower's matrix products are grouped by transformer block and, inside a block, by what they do:
``qkv`` (the input projection to queries, keys and values, and for BF16 attention's own activation x
activation products), ``attn_out`` (attention's output projection), ``mlp`` (both MLP matmuls); the patch
embedding is its own unit (``patch_embed``). A unit is named ``block.N/GROUP``.

Search (``search_plan``), every measurement with the gate's own metrics (``gate.evaluate_gate``) on held-out
frames (the search frames: a balanced subset of the gate's held-out set, so the final gate is not the set the
plan was tuned on alone):

1. everything in low precision; if that passes, done;
2. sensitivity of each block: only that block in low precision (``badness``: the worst metric as a fraction of
   its limit, 1.0 = at the limit);
3. blocks go to low precision least sensitive first: the longest run of them, in that order, that still passes,
   found by bisection (``grow``: all of them first, then at most ceil(log2 n) more evaluations for n blocks,
   where adding them one by one took n; errors of separate layers add up, so once a block does not fit, the more
   sensitive ones after it do not either);
4. the blocks that could not go whole, least sensitive block first: sensitivity of each of their groups alone,
   then the groups least sensitive first, the same way;
5. the plan is gated on the whole held-out set; if it fails there, the most sensitive low-precision units
   go back to FP32 one at a time until it passes.

A time budget bounds the measurements of steps 2 and 4 (the plan records ``complete: false`` when it cut them
short): what was not measured stays FP32. The bisections of steps 3 and 4 run on what was measured even after the
budget is spent (a few evaluations), and so does step 5's final gate.
The plan (units low / kept FP32, their sensitivities, evaluations, seconds) is what the manifest records and
what ``--plan`` re-applies without searching. NNCF's ``quantize_with_accuracy_control`` ranks and reverts
single quantizers the same way; docs/calibration.md says why this search is our own (per-group units both
precisions share, the gate's four metrics, one Q/DQ recipe TensorRT reads) and what NNCF measured.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from aaclip.contract.errors import UserError

from .gate import GateLimits, GateReport

log = logging.getLogger(__name__)

GROUPS = ("qkv", "attn_out", "mlp")
PATCH_EMBED = "patch_embed"
DEFAULT_BUDGET_S = 1800.0
DEFAULT_SEARCH_FRAMES = 32
"""Held-out frames each search step is gated on (``--search-frames``): half normal, half anomalous."""
"""Default time budget of the search (``--time-budget``): the tiny model needs seconds, ViT-B minutes."""
_BLOCK = re.compile(r"(?:^|/)resblocks\.(\d+)/(attn|mlp)/")


@dataclass(frozen=True)
class Unit:
    """A part of the tower that goes to low precision as a whole: its name, block, group and graph nodes."""

    name: str
    block: Optional[int]
    group: str
    nodes: tuple[str, ...]


def tower_units(nodes: Sequence[tuple[str, bool]]) -> list[Unit]:
    """Units of the candidate matmul nodes ``(name, has_constant_weight)``, given in graph order.

    In a block's ``attn`` scope the last weight matmul is the output projection (``attn_out``); the earlier
    ones (one fused in-projection, or separate q/k/v) and the activation x activation products are ``qkv``.
    ``/conv1/...`` is the patch embedding; any other scoped node is a unit of its own (``other``)."""
    per_block: dict[int, dict[str, list[str]]] = {}
    last_weighted: dict[int, str] = {}
    extra: list[Unit] = []
    patch: list[str] = []
    for name, weighted in nodes:
        m = _BLOCK.search(name)
        if m is None:
            if "/conv1/" in name or name.startswith("/conv1"):
                patch.append(name)
            else:
                extra.append(Unit(f"other:{name}", None, "other", (name,)))
            continue
        block, scope = int(m.group(1)), m.group(2)
        groups = per_block.setdefault(block, {g: [] for g in GROUPS})
        if scope == "mlp":
            groups["mlp"].append(name)
        else:
            groups["qkv"].append(name)
            if weighted:
                last_weighted[block] = name
    units = [Unit(PATCH_EMBED, None, PATCH_EMBED, tuple(patch))] if patch else []
    for block in sorted(per_block):
        groups = per_block[block]
        out = last_weighted.get(block)
        if out is not None:
            groups["qkv"].remove(out)
            groups["attn_out"].append(out)
        for g in GROUPS:
            if groups[g]:
                units.append(Unit(f"block.{block}/{g}", block, g, tuple(groups[g])))
    return units + extra


def block_of(unit: Unit) -> str:
    """The block-level name a unit belongs to (``block.3``; the patch embedding and other units are their own)."""
    return f"block.{unit.block}" if unit.block is not None else unit.name


def badness(report: GateReport) -> float:
    """The worst gate metric as a fraction of its limit's allowance (1.0 = exactly at the limit, > 1 fails)."""
    lim = report.limits
    ratios = [report.map_err / lim.max_map_err if lim.max_map_err > 0 else (0.0 if report.map_err == 0 else
                                                                             float("inf")),
              _shortfall(report.map_corr, lim.min_map_corr), _shortfall(report.rank_corr, lim.min_rank_corr)]
    if report.auroc_change is not None:
        ratios.append(report.auroc_change / lim.max_auroc_change if lim.max_auroc_change > 0 else
                      (0.0 if report.auroc_change == 0 else float("inf")))
    return float(max(ratios))


def _shortfall(value: float, minimum: float) -> float:
    allowance = 1.0 - minimum
    if allowance <= 0:
        return 0.0 if value >= minimum else float("inf")
    return max(0.0, 1.0 - value) / allowance


@dataclass
class Plan:
    """What the search found: the units in low precision and those kept FP32, with the evidence."""

    low: list[str]
    fp32: list[str]
    sensitivity: dict[str, float] = field(default_factory=dict)  # unit or block -> badness alone in low precision
    evaluations: int = 0
    seconds: float = 0.0
    budget_s: Optional[float] = None
    complete: bool = True
    searched: bool = True   # False: re-applied from a manifest (--plan), not searched

    def fp32_nodes(self, units: Sequence[Unit]) -> list[str]:
        keep = set(self.fp32)
        return [n for u in units if u.name in keep for n in u.nodes]

    def to_dict(self) -> dict:
        return {"units_low": list(self.low), "units_fp32": list(self.fp32),
                "sensitivity": {k: round(v, 6) if math.isfinite(v) else None for k, v in self.sensitivity.items()},
                "evaluations": self.evaluations, "seconds": round(self.seconds, 2), "budget_s": self.budget_s,
                "complete": self.complete, "searched": self.searched}

    def summary(self, units: Sequence[Unit]) -> list[str]:
        """Lines for the command's output: which blocks stayed FP32, whole or in part."""
        low = set(self.low)
        by_block: dict[str, list[Unit]] = {}
        for u in units:
            by_block.setdefault(block_of(u), []).append(u)
        whole, partial = [], []
        for block, members in by_block.items():
            kept = [u for u in members if u.name not in low]
            if len(kept) == len(members):
                whole.append(block)
            elif kept:
                partial.append(f"{block} ({', '.join(u.group for u in kept)})")
        lines = [f"plan: {len(self.low)} of {len(units)} units in low precision"
                 + ("" if self.complete else " (time budget reached: units not measured stay FP32)")]
        lines.append("  kept FP32, whole: " + (", ".join(whole) if whole else "none"))
        lines.append("  kept FP32, in part: " + (", ".join(partial) if partial else "none"))
        how = "re-applied from the manifest" if not self.searched else (
            f"{self.evaluations} evaluations in {self.seconds:.1f} s")
        lines.append(f"  ({how})")
        return lines


def plan_from_record(record: dict, units: Sequence[Unit]) -> Plan:
    """The plan a manifest recorded (``quantization.plan`` or ``precision_gates[...].plan``), checked against
    this graph's units."""
    if not isinstance(record, dict) or "units_fp32" not in record or "units_low" not in record:
        raise UserError("the manifest records no precision plan (units_low/units_fp32): run the search instead of "
                        "--plan")
    names = {u.name for u in units}
    unknown = [n for n in list(record["units_low"]) + list(record["units_fp32"]) if n not in names]
    if unknown:
        raise UserError(f"the recorded plan names units this graph does not have ({', '.join(unknown[:3])}): "
                        "it was found for another model; run the search")
    sensitivity = {k: float("inf") if v is None else float(v) for k, v in (record.get("sensitivity") or {}).items()}
    return Plan(low=list(record["units_low"]), fp32=list(record["units_fp32"]), sensitivity=sensitivity,
                searched=False)


Evaluate = Callable[[frozenset], GateReport]


@dataclass
class _Clock:
    budget_s: Optional[float]
    now: Callable[[], float] = time.monotonic
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = self.now()

    @property
    def elapsed(self) -> float:
        return self.now() - self.start

    @property
    def out(self) -> bool:
        return self.budget_s is not None and self.elapsed >= self.budget_s


def search_plan(units: Sequence[Unit], evaluate: Evaluate, final: Evaluate, budget_s: Optional[float] = DEFAULT_BUDGET_S,
                now: Callable[[], float] = time.monotonic,
                progress: Optional[Callable[[str], None]] = None) -> tuple[Plan, GateReport]:
    """Search the plan (module docstring) and return it with the final gate report on the whole held-out set.

    ``evaluate(low_units)`` gates a set of low-precision unit names on the search frames, ``final`` on the
    whole held-out set; ``final`` is called last with the plan returned (the caller stages that graph). When no
    plan with a unit in low precision passes, the plan and report are those of everything in low precision (the
    caller refuses it, or writes it with ``--force``)."""
    if not units:
        raise UserError("the graph has no transformer matmuls to put into low precision")
    clock = _Clock(budget_s, now)
    say = progress or (lambda msg: log.info("%s", msg))
    evals = 0
    sensitivity: dict[str, float] = {}
    complete = True

    seen: dict[frozenset, GateReport] = {}  # a set measured before (a bisection step can repeat one)

    def run(low: Iterable[str], what: str) -> GateReport:
        nonlocal evals
        key = frozenset(low)
        if key in seen:
            return seen[key]
        evals += 1
        report = seen[key] = evaluate(key)
        say(f"search {evals}: {what}: worst metric at {badness(report):.2f} of its limit "
            f"({'passes' if report.passed else 'fails'}) after {clock.elapsed:.0f} s")
        return report

    names = [u.name for u in units]
    everything = run(names, "everything in low precision")
    current: list[str] = []
    if everything.passed:
        current = list(names)
    else:
        blocks: dict[str, list[str]] = {}
        for u in units:
            blocks.setdefault(block_of(u), []).append(u.name)
        for block, members in blocks.items():  # 2. sensitivity of each block alone
            if clock.out:
                complete = False
                break
            sensitivity[block] = badness(run(members, f"{block} alone"))
        passing = sorted((b for b in sensitivity if sensitivity[b] <= 1.0), key=sensitivity.get)  # 3.
        added = grow(current, [blocks[b] for b in passing], lambda low, n: run(low, f"+ {n} least sensitive blocks"))
        current += [n for b in passing[:added] for n in blocks[b]]
        # the groups of the blocks that did not fit, least sensitive block first (a budget cut leaves the most
        # sensitive ones FP32); blocks never measured stay FP32 whole
        failed_blocks = sorted((b for b in sensitivity if b not in passing[:added]), key=sensitivity.get)
        group_units = [n for b in failed_blocks for n in blocks[b]]
        for name in group_units:  # 4. groups of the blocks that could not go whole
            if name in sensitivity:
                continue  # a one-unit block (the patch embedding): measured above
            if clock.out:
                complete = False
                break
            sensitivity[name] = badness(run([name], f"{name} alone"))
        if any(b not in sensitivity for b in blocks):
            complete = False
        groups = sorted((n for n in group_units if n not in current and sensitivity.get(n, float("inf")) <= 1.0),
                        key=sensitivity.get)
        added = grow(current, [[n] for n in groups], lambda low, n: run(low, f"+ {n} least sensitive groups"))
        current += groups[:added]
    order = sorted(current, key=lambda n: sensitivity.get(n, sensitivity.get(block_of(_unit(units, n)), 0.0)),
                   reverse=True)
    report = final(frozenset(current)) if current else None  # 5. the whole held-out set
    evals += bool(current)
    while report is not None and not report.passed and len(current) > 1:
        worst = order.pop(0)
        current.remove(worst)
        say(f"final gate fails on the whole held-out set: {worst} back to FP32")
        report = final(frozenset(current))
        evals += 1
    if report is None or not report.passed:  # no plan passes: report (and leave staged) everything in low precision
        say("no part of the tower passes the gate in low precision; the figures below are for all of it")
        current = list(names)
        report = final(frozenset(current))
        evals += 1
    low = [n for n in names if n in set(current)]
    plan = Plan(low=low, fp32=[n for n in names if n not in set(current)], sensitivity=sensitivity,
                evaluations=evals, seconds=clock.elapsed, budget_s=budget_s, complete=complete)
    return plan, report


def grow(current: Sequence[str], candidates: Sequence[Sequence[str]],
         passes: Callable[[list[str], int], GateReport]) -> int:
    """How many of ``candidates`` (each a list of unit names, least sensitive first) can join ``current`` (which
    passes) with the gate still passing: the longest passing prefix, by bisection. ``passes(low, n)`` gates
    ``current`` plus the first ``n`` candidates. Assumes that a prefix fails once a shorter one failed (errors
    add up); the final gate on the whole held-out set checks the plan either way."""
    lo, hi = 0, len(candidates) + 1   # lo candidates known to pass, hi known (or assumed) to fail
    while hi - lo > 1:
        mid = (lo + hi) // 2 if hi <= len(candidates) else len(candidates)  # first try all of them
        if passes(list(current) + [n for c in candidates[:mid] for n in c], mid).passed:
            lo = mid
        else:
            hi = mid
    return lo


def _unit(units: Sequence[Unit], name: str) -> Unit:
    for u in units:
        if u.name == name:
            return u
    raise KeyError(name)


__all__ = ["GROUPS", "PATCH_EMBED", "DEFAULT_BUDGET_S", "DEFAULT_SEARCH_FRAMES", "Unit", "Plan", "tower_units",
           "block_of", "badness",
           "search_plan", "grow", "plan_from_record", "GateLimits"]
