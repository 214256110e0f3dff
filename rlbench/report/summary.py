"""summary.md: the report's tables in Markdown, written next to report.json with the plots.

The answer first: the run table, then what each algorithm buys for what it costs
(rlbench/report/tradeoffs.py, drawn in tradeoffs.png). Units as in the terminal tables: memory in
MiB, accuracy in percent with its standard error, the change of accuracy in points, times in
seconds, MFU in percent. Every name, label, description
and error from the report is written as literal text (`md_text`): the file is safe to render.
"""

from __future__ import annotations

from typing import Any

from rlbench.report.accuracy_view import arm_markdown, sft_curve_points
from rlbench.report.format import (
    PHASE_ORDER,
    ROLE_ORDER,
    Markdown,
    accuracy_pm,
    delta_interval,
    hacking_text,
    markdown_table,
    md_text,
    mib,
    num,
    p_value_text,
    primary_probe,
    stderr_note,
    warning_lines,
)
from rlbench.report.machine import fingerprint_text, peak_text
from rlbench.report.peaks import peak_cell, split_peak
from rlbench.report.rank_view import rank_markdown
from rlbench.report.roofline import floor_ratio, roofline_markdown
from rlbench.report.seeds import seed_markdown
from rlbench.report.tradeoffs import tradeoff_markdown


def summary_markdown(report: dict[str, Any]) -> str:
    """Runs, time and throughput per phase, memory per role, failures, and the figures."""
    probe = primary_probe(report)
    suite = report.get("suite") or {}
    env = report.get("environment") or {}
    gpu = (env.get("gpu") or {}).get("name")
    git = env.get("git") or {}
    lines = [f"# rlbench: {md_text(suite.get('name', '?'))}", ""]
    if report.get("smoke"):
        lines += ["**Smoke run** (`rlbench run --smoke`): every run was cut short; not a baseline.", ""]
    if suite.get("description"):
        lines += [md_text(suite["description"], block=True), ""]
    lines += [f"- created {md_text(report.get('created'))}, status {md_text(report.get('status'))}",
              f"- device: {md_text(gpu or env.get('cpu'))} ({md_text(env.get('cpu_cores'))} CPU cores); "
              f"memory probe {md_text(probe)}",
              f"- machine: {md_text(fingerprint_text(env))}",
              f"- git {md_text(git.get('commit') or 'unknown')}" + (" (dirty)" if git.get("dirty") else ""),
              f"- budget: {md_text(_budget_text(suite.get('budget') or {}))}", "", "## runs", ""]
    rows = []
    for run in report["runs"]:
        acc = run.get("accuracy") or {}
        budget = run.get("budget") or {}
        rows.append([
            run["id"], str(run.get("status", "?")), run.get("stopped_by") or "-",
            ", ".join(r for r in ROLE_ORDER if r in (run.get("roles") or {})) or "-",
            str(budget.get("completions", "-")), str(budget.get("prompts", "-")), num(budget.get("flops"), "{:.3g}"),
            *(peak_cell(split_peak(run, probe, evaluation)) for evaluation in (False, True)),
            accuracy_pm(acc, "before"), accuracy_pm(acc, "after"), delta_interval(acc), p_value_text(acc),
            hacking_text(run),
        ])
    lines.append(markdown_table(["run", "status", "stopped by", "roles", "completions", "prompts", "FLOPs",
                                 "train peak MiB", "eval peak MiB", "acc before %", "acc after %", "Δ acc (pts) [95% CI]", "p",
                                 "hacking"], rows))
    lines += ["", md_text(f"Peaks measured by {probe}, with the phase that reached them: train, the highest phase "
                          "that is not an evaluation; eval, the evaluation's."), "",
              md_text(stderr_note(report)[0].upper() + stderr_note(report)[1:] + "."), ""]
    warnings = warning_lines(report)
    if warnings:
        lines += ["## warnings", "", *[f"- {md_text(w)}" for w in warnings], ""]
    lines += seed_markdown(report)
    lines += arm_markdown(report)
    lines += tradeoff_markdown(report)
    lines += throughput_section(report)
    lines += ["", f"## memory by role (MiB; static from tensors, phase peaks measured by {md_text(probe)})", ""]
    rows = []
    for run in report["runs"]:
        for role, static, transient, phase in role_segments(run, probe):
            entry = run["roles"][role]
            s = entry["static"]
            rows.append([run["id"], role, mib(s.get("weights")), mib(s.get("gradients")),
                         mib(s.get("optimizer")), mib(static), phase or "-", mib(transient),
                         mib((entry.get("peak_bytes") or {}).get(probe))])
        recon = ((run.get("memory") or {}).get("reconciliation") or {}).get(probe)
        if recon:
            rows.append([run["id"], Markdown("**process peak**"), "", "", "", mib(recon["static_bytes"]),
                         recon["peak_phase"], mib(recon["peak_phase_transient_bytes"]),
                         Markdown(f"**{mib(recon['process_peak_bytes'])}**")])
        for name, evaluation in (("training peak", False), ("evaluation peak", True)):
            found = split_peak(run, probe, evaluation)
            if found is not None:
                rows.append([run["id"], Markdown(f"**{name}**"), "", "", "", "", found[0], "",
                             Markdown(f"**{mib(found[1])}**")])
        if recon:
            rows.append([run["id"], "other (libraries, allocator)", "", "", "", "", "", "", mib(recon["other_bytes"])])
            rows.append([run["id"], "baseline (before loading)", "", "", "", "", "", "", mib(recon["baseline_bytes"])])
    lines.append(markdown_table(["run", "role", "weights", "grads", "optimizer", "static", "peak phase",
                                 "phase transient", "phase peak"], rows))
    lines += rank_markdown(report, probe)
    failed = [r for r in report["runs"] if r.get("status") != "ok"]
    if failed:
        lines += ["", "## runs that did not end ok", ""]
        lines += [f"- {md_text(r['id'])}: {md_text(r.get('status'))}: {md_text(r.get('error') or 'no error recorded')}"
                  for r in failed]
    lines += ["", "![memory by role](memory_by_role.png)", "", "![training curves](curves.png)", ""]
    if sft_curve_points(report):
        lines += ["![SFT on the fixed demonstrations: dev accuracy by step](sft_curve.png)", ""]
    return "\n".join(lines)


def role_segments(run: dict[str, Any], probe: str) -> list[tuple[str, int, int, str | None]]:
    """(role, static bytes, transient bytes of its peak phase, that phase) for each role of a run."""
    out = []
    roles = run.get("roles") or {}
    for role in _roles_in_order(roles):
        entry = roles[role]
        phases = entry.get("phases") or {}
        measured = {p: ph for p, ph in phases.items() if probe in (ph.get("peak_bytes") or {})}
        peak_phase = max(measured, key=lambda p: measured[p]["peak_bytes"][probe], default=None)
        transient = (measured[peak_phase].get("rise_bytes") or {}).get(probe, 0) if peak_phase else 0
        out.append((role, int(entry["static"]["total"]), max(int(transient), 0), peak_phase))
    return out


def _roles_in_order(roles: dict[str, Any]) -> list[str]:
    return [r for r in ROLE_ORDER if r in roles] + [r for r in roles if r not in ROLE_ORDER]


def throughput_section(report: dict[str, Any]) -> list[str]:
    """Seconds per phase over the whole run, step time, rates and MFU, one row per run."""
    phases = [p for p in PHASE_ORDER if any((r.get("throughput") or {}).get(f"time/{p}_s") is not None
                                            for r in report["runs"])]
    rows = []
    for run in report["runs"]:
        tp = run.get("throughput") or {}
        mfu = tp.get("throughput/mfu")
        rows.append([run["id"], num(tp.get("time/step_s"), "{:.3f}"),
                     *[num(tp.get(f"time/{p}_s"), "{:.2f}") for p in phases],
                     num(tp.get("throughput/gen_tokens_per_s"), "{:,.0f}"),
                     num(tp.get("throughput/trained_tokens_per_s"), "{:,.0f}"),
                     num(tp.get("throughput/completions_per_s"), "{:,.1f}"),
                     num(None if mfu is None else mfu * 100, "{:.1f}"), num(floor_ratio(run), "{:.1f}")])
    table = markdown_table(["run", "step s", *[f"{p} s" for p in phases], "gen tok/s", "trained tok/s",
                            "completions/s", "MFU %", "x floor"], rows)
    peaks = sorted({text for text in map(peak_text, report["runs"]) if text})
    return ["## time and throughput", "", table, "",
            "Phase columns: seconds spent in each phase over the whole run (every step); step s: mean "
            "seconds per RL step; MFU: model FLOPs per second over the device's peak in the compute dtype"
            + (f" ({md_text('; '.join(peaks))})." if peaks else ".")
            + " x floor: the phases' measured time over the sum of their floors (next section)."
            , *roofline_markdown(report)]


def _budget_text(budget: dict[str, Any]) -> str:
    limits = [f"{k} {v}" for k, v in budget.items() if v is not None]
    return ", ".join(limits) or "none"
