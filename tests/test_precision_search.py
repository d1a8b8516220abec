"""The accuracy-aware precision search (``aaclip.calibration.search``) on constructed cases: units of the
tower, least sensitive first, the time budget, the final gate's back-off, and the plan's record."""
import numpy as np
import pytest
from aaclip.calibration.gate import GateLimits, GateReport
from aaclip.calibration.search import Plan, badness, grow, plan_from_record, search_plan, tower_units
from aaclip.contract.errors import UserError

NODES = [("/conv1/Conv", True)] + [
    (f"/resblocks.{b}/{name}", weighted) for b in range(3) for name, weighted in (
        ("attn/MatMul", True), ("attn/MatMul_1", False), ("attn/MatMul_2", False), ("attn/MatMul_3", True),
        ("mlp/c_fc/MatMul", True), ("mlp/c_proj/MatMul", True))]


def report(map_err: float, limits: GateLimits = GateLimits()) -> GateReport:
    return GateReport(map_err=map_err, map_corr=1.0, map_corr_min=1.0, rank_corr=1.0, auroc_fp32=0.5,
                      auroc_int8=0.5, auroc_change=0.0, frames=4, normals=2, anomalies=2, limits=limits)


def additive(errors: dict, calls: list):
    """An evaluator whose map error is the sum of the low-precision units' own errors."""
    def evaluate(low):
        calls.append(frozenset(low))
        return report(sum(errors[u] for u in low))
    return evaluate


def test_units_group_qkv_attention_output_and_mlp():
    units = {u.name: u for u in tower_units(NODES)}
    assert list(units)[:4] == ["patch_embed", "block.0/qkv", "block.0/attn_out", "block.0/mlp"]
    assert len(units) == 10
    assert units["block.1/qkv"].nodes == ("/resblocks.1/attn/MatMul", "/resblocks.1/attn/MatMul_1",
                                          "/resblocks.1/attn/MatMul_2")  # in-projection + activation products
    assert units["block.1/attn_out"].nodes == ("/resblocks.1/attn/MatMul_3",)
    assert units["block.2/mlp"].nodes == ("/resblocks.2/mlp/c_fc/MatMul", "/resblocks.2/mlp/c_proj/MatMul")
    weights_only = {u.name: u for u in tower_units([n for n in NODES if n[1]])}  # INT8's candidates
    assert weights_only["block.0/qkv"].nodes == ("/resblocks.0/attn/MatMul",)
    assert [u.name for u in tower_units([("/transformer/resblocks.0/attn/q/MatMul", True),
                                         ("/transformer/resblocks.0/attn/k/MatMul", True),
                                         ("/transformer/resblocks.0/attn/out/MatMul", True)])] == \
        ["block.0/qkv", "block.0/attn_out"]  # separate q/k/v projections: the last one is the output


def test_badness_is_the_worst_metric_over_its_allowance():
    limits = GateLimits(max_map_err=0.01, min_map_corr=0.98, min_rank_corr=0.95, max_auroc_change=0.02)
    r = GateReport(map_err=0.005, map_corr=0.97, map_corr_min=0.9, rank_corr=0.99, auroc_fp32=0.6, auroc_int8=0.59,
                   auroc_change=0.01, frames=4, normals=2, anomalies=2, limits=limits)
    assert badness(r) == pytest.approx(1.5)  # map correlation: 0.03 short of 1 against an allowance of 0.02
    assert badness(report(0.0)) == 0.0 and badness(report(0.02)) == pytest.approx(2.0)
    worst_auroc = GateReport(map_err=0.001, map_corr=1.0, map_corr_min=1.0, rank_corr=0.99, auroc_fp32=0.6,
                             auroc_int8=0.57, auroc_change=0.03, frames=4, normals=2, anomalies=2, limits=limits)
    assert badness(worst_auroc) == pytest.approx(1.5)  # 0.03 against a 0.02 limit
    no_labels = GateReport(map_err=0.001, map_corr=1.0, map_corr_min=1.0, rank_corr=0.97, auroc_fp32=None,
                           auroc_int8=None, auroc_change=None, frames=4, normals=4, anomalies=0, limits=limits)
    assert badness(no_labels) == pytest.approx(0.6)  # rank correlation 0.03 short against an allowance of 0.05


def test_least_sensitive_go_first_and_failing_blocks_are_split_into_groups():
    units = tower_units(NODES)
    errors = {u.name: 0.001 for u in units}
    errors.update({"block.1/mlp": 0.006, "patch_embed": 0.0005, "block.2/qkv": 0.02})  # block.2/qkv fails alone
    calls = []
    plan, final = search_plan(units, additive(errors, calls), additive(errors, []), budget_s=None)
    # everything: fails; blocks alone: block.2 (0.022) fails; growth by sensitivity (patch_embed 0.0005, block.0
    # 0.003, block.1 0.008): all three 0.0115 fails, then the first two 0.0035 pass; then groups of block.1 and
    # block.2 alone, and their growth: the five at 0.001 on top (0.0085) pass, all six (0.0145) fail
    assert calls[0] == frozenset(errors)
    block = {b: {u.name for u in units if u.block == b} for b in range(3)}
    assert calls[5] == frozenset({"patch_embed"} | block[0] | block[1])
    assert calls[6] == frozenset({"patch_embed"} | block[0])  # (patch_embed alone, the bisection's first half,
    # was measured already: not evaluated again)
    assert len(calls) == 7 + 6 + 4  # 6 groups alone; all 6 groups (fail), then 3, 4 and 5 of them: 5 fit
    assert set(plan.fp32) == {"block.1/mlp", "block.2/qkv"}
    assert final.passed and final.map_err == pytest.approx(0.0005 + 7 * 0.001)
    assert plan.sensitivity["block.2"] == pytest.approx(2.2) and plan.sensitivity["block.2/qkv"] == pytest.approx(2.0)
    assert plan.complete and plan.evaluations == len(calls) + 1
    assert plan.low == [u.name for u in units if u.name not in plan.fp32]  # graph order


def test_time_budget_keeps_what_was_not_measured_in_fp32():
    units = tower_units(NODES)
    errors = {u.name: 0.002 for u in units}
    calls, whole = [], []
    plan, final = search_plan(units, additive(errors, calls), additive(errors, whole), budget_s=3.5,
                              now=lambda: float(len(calls)))  # one second per evaluation
    assert not plan.complete
    # everything, patch_embed, block.0, block.1 measured (the clock reads 3 before block.1), then no more time:
    assert calls[1:4] == [frozenset({"patch_embed"})] + [frozenset(u.name for u in units if u.block == b)
                                                         for b in (0, 1)]
    # the bisection still runs on what was measured: all three (0.014) fail, patch_embed + block.0 (0.008) pass;
    # block.1's groups are not measured (no time) and, with block.2 (never measured), stay FP32
    assert calls[4:] == [calls[1] | calls[2] | calls[3], calls[1] | calls[2]]  # (patch_embed alone: measured)
    assert whole == [calls[1] | calls[2]] and final.passed and final.map_err == pytest.approx(0.008)
    assert set(plan.low) == calls[1] | calls[2] and "block.2" not in plan.sensitivity
    assert {"block.1/qkv", "block.2/qkv", "block.2/attn_out", "block.2/mlp"} <= set(plan.fp32)

def test_final_gate_backs_off_the_most_sensitive_and_a_hopeless_model_reports_everything():
    units = tower_units(NODES)
    errors = {u.name: 0.001 for u in units}
    search_frames = additive(errors, [])
    whole = []

    def stricter(low):  # the whole held-out set sees twice the error of the search frames
        whole.append(frozenset(low))
        return report(2 * sum(errors[u] for u in low))

    plan, final = search_plan(units, search_frames, stricter, budget_s=None)
    assert final.passed and len(plan.low) == 5 and len(whole) > 1  # 2 x 5 x 0.001 = 0.01: at the limit

    bad = {u.name: 0.05 for u in units}
    whole = []
    plan, final = search_plan(units, additive(bad, []), additive(bad, whole), budget_s=None)
    assert not final.passed and whole[-1] == frozenset(bad)  # the staged graph is the all-low one
    assert set(plan.low) == set(bad)


def test_plan_record_round_trip_and_refusals():
    units = tower_units(NODES)
    plan = Plan(low=["block.0/mlp"], fp32=[u.name for u in units if u.name != "block.0/mlp"],
                sensitivity={"block.0": 0.5, "block.1": float("inf")})
    record = plan.to_dict()
    assert record["sensitivity"]["block.1"] is None  # JSON has no infinity
    again = plan_from_record(record, units)
    assert (again.low, again.fp32, again.searched) == (plan.low, plan.fp32, False)
    assert plan.fp32_nodes(units)[:2] == ["/conv1/Conv", "/resblocks.0/attn/MatMul"]
    with pytest.raises(UserError, match="another model"):
        plan_from_record(dict(record, units_low=["block.7/mlp"]), units)
    with pytest.raises(UserError, match="no precision plan"):
        plan_from_record({"gate": {}}, units)
    lines = again.summary(units)
    assert lines[0] == "plan: 1 of 10 units in low precision"
    assert "kept FP32, whole: patch_embed, block.1, block.2" in lines[1]
    assert "kept FP32, in part: block.0 (qkv, attn_out)" in lines[2]


@pytest.mark.parametrize("fits", [0, 1, 2, 5, 6, 7, 12, 13])
def test_grow_finds_the_longest_passing_prefix_in_logarithmic_evaluations(fits):
    candidates = [[f"u{i}"] for i in range(13)]
    calls = []

    def passes(low, n):
        calls.append(n)
        assert low == ["base"] + [f"u{i}" for i in range(n)]
        return report(0.0 if n <= fits else 0.02)

    assert grow(["base"], candidates, passes) == fits
    assert calls[0] == 13  # all of them first: one evaluation when everything fits
    assert len(calls) <= 1 + 4  # then ceil(log2 13) = 4 at most, where one by one took 13
    assert grow(["base"], [], passes) == 0 and len(calls) <= 5  # nothing to add: no evaluation


def test_groups_of_the_least_sensitive_failed_block_are_measured_first():
    units = tower_units(NODES)
    per_unit = {None: 0.0, 0: 0.004, 1: 0.003, 2: 0.002}  # blocks alone: 0.012 (fails), 0.009, 0.006
    errors = {u.name: per_unit[u.block] for u in units}
    calls = []
    plan, final = search_plan(units, additive(errors, calls), additive(errors, []), budget_s=None)
    groups = [sorted(c)[0] for c in calls if len(c) == 1 and "/" in next(iter(c))]
    # patch_embed and block.2 fit (0.006); block.1 (0.9 of the limit) is split before block.0 (1.2), not graph order
    assert groups == ["block.1/qkv", "block.1/attn_out", "block.1/mlp", "block.0/qkv", "block.0/attn_out",
                      "block.0/mlp"]
    assert final.passed and final.map_err <= 0.01 and plan.complete


def test_search_steps_leave_out_checks_their_few_frames_cannot_resolve():
    from aaclip.calibration.gate import evaluate_gate, resolvable_limits

    limits = GateLimits()  # AUROC change <= 0.02, rank correlation >= 0.95
    labels = np.array([0, 0, 0, 1, 1, 1])
    step, unresolved = resolvable_limits(limits, labels)
    # one swapped pair: AUROC 1/9 = 0.11 > 0.02, Spearman 12 / (6 x 35) = 0.057 > 0.05: both measure noise here
    assert step.max_auroc_change == float("inf") and step.min_rank_corr == float("-inf")
    assert step.max_map_err == limits.max_map_err and step.min_map_corr == limits.min_map_corr
    assert [line.split(" (")[0] for line in unresolved] == ["|AUROC change|", "rank correlation"]
    maps = np.random.default_rng(0).random((6, 4, 4))
    fp32 = np.array([0.10, 0.20, 0.34, 0.35, 0.50, 0.60])
    flipped = np.array([0.10, 0.20, 0.36, 0.35, 0.50, 0.60])  # a tie broken the other way: maps unchanged
    strict = evaluate_gate(maps, maps, fp32, flipped, labels, limits)
    assert not strict.passed and strict.auroc_change == pytest.approx(1 / 9)
    assert strict.rank_corr == pytest.approx(1 - 12 / 210)  # one adjacent swap
    assert evaluate_gate(maps, maps, fp32, flipped, labels, step).passed and badness(
        evaluate_gate(maps, maps, fp32, flipped, labels, step)) == 0.0
    assert not evaluate_gate(maps, maps + 0.02, fp32, flipped, labels, step).passed  # the map checks stay
    eight, unresolved8 = resolvable_limits(limits, np.array([0] * 4 + [1] * 4))
    assert eight.min_rank_corr == limits.min_rank_corr and eight.max_auroc_change == float("inf")  # 12/504 < 0.05
    assert resolvable_limits(limits, np.array([0] * 8 + [1] * 8)) == (limits, [])  # 1/64 < 0.02: all checked
