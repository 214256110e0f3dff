"""The estimate's check against a report: which measured rise it holds the estimate to.

A report written before the steady rise existed (a real saved one, tests/fixtures/reports) is
compared on the rise over all calls; once a phase carries `steady_rise_bytes` (the calls after its
first, as a run now records it), the check uses that, and each row says which it used."""

from __future__ import annotations

import copy
from pathlib import Path

from rlbench.estimate.check import ALL_CALLS, STEADY, compare, worst_error
from rlbench.report.schema import load_report, schema_errors

REPORTS = Path(__file__).parent / "fixtures" / "reports"
MIB = 2**20


def _estimate(report: dict) -> dict:
    """An estimate of the report's grpo_zero run: static bytes as measured, generate's transient 12 MiB."""
    [run] = [r for r in report["runs"] if r["label"] == "grpo_zero"]
    return {"algorithms": [{"label": "grpo_zero",
                            "static": {role: {"total": e["static"]["total"]} for role, e in run["roles"].items()},
                            "phases": {"generate": {"transient_bytes": 12 * MIB, "peak_bytes": 200 * MIB}}}]}


def _generate_rise(rows: list[dict]) -> dict:
    [row] = [r for r in rows if r["what"] == "rise" and r["phase"] == "generate"]
    return row


def test_an_earlier_report_is_checked_on_the_rise_over_all_calls():
    report = load_report(REPORTS / "ci_v2.json")
    row = _generate_rise(compare(_estimate(report), report, "cpu"))
    # The saved report's generate rose 17,313,792 bytes (16.5 MiB) in its one call.
    assert row["rise_of"] == ALL_CALLS and row["measured_bytes"] == row["all_calls_bytes"] == 17_313_792
    assert abs(row["error"] - (12 * MIB - 17_313_792) / 17_313_792) < 1e-12  # -27.3%


def test_the_steady_rise_is_used_where_a_report_has_it():
    report = copy.deepcopy(load_report(REPORTS / "ci_v2.json"))
    generate = report["runs"][0]["roles"]["policy"]["phases"]["generate"]
    # Three calls: the first rose 16.5 MiB (library code paged in), the later ones at most 12.5 MiB.
    generate.update(calls=3, steady_rise_bytes={"cpu": int(12.5 * MIB)})
    assert schema_errors(report) == []
    row = _generate_rise(compare(_estimate(report), report, "cpu"))
    assert row["rise_of"] == STEADY and row["measured_bytes"] == int(12.5 * MIB)
    assert row["all_calls_bytes"] == 17_313_792
    assert row["error"] == -0.04  # (12 - 12.5) / 12.5
    assert worst_error([row]) == 0.0  # 12.5 MiB is under the single-process check's 100 MiB: shown, not held
    generate["steady_rise_bytes"] = None  # a phase called once: the rise over all calls again
    assert schema_errors(report) == []
    assert _generate_rise(compare(_estimate(report), report, "cpu"))["rise_of"] == ALL_CALLS
