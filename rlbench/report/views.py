"""Rich tables for people, views of the JSON report (which stays the contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rlbench.errors import UserError
from rlbench.report.format import (
    ROLE_ORDER,
    ROLE_SHORT,
    _value,
    accuracy_pm,
    delta_interval,
    hacking_text,
    literal,
    mib,
    num,
    p_value_text,
    primary_probe,
    stderr_note,
    visible,
    warning_lines,
)
from rlbench.report.peaks import peak_cell, split_peak
from rlbench.report.roofline import floor_ratio
from rlbench.report.seeds import seed_table


def summary_table(report: dict[str, Any]) -> Table:
    """One row per run: status, budget used, roles, training and evaluation peaks, step time and
    generation rate (accuracy is `accuracy_table`: two tables of a readable width rather than one too wide)."""
    probe = primary_probe(report)
    table = Table(title=Text(f"rlbench: {report['suite']['name']}{smoke_note(report)}"), title_justify="left")
    right = {"justify": "right", "no_wrap": True}
    for col, kw in (("run", {"no_wrap": True}), ("status", {"no_wrap": True}), ("stopped by", {"no_wrap": True}),
                    ("roles", {"no_wrap": True}), ("compl.", right), ("prompts", right), ("FLOPs", right),
                    ("train peak MiB", right), ("eval peak MiB", right), ("step s", right), ("gen tok/s", right),
                    ("x floor", right)):
        table.add_column(col, **kw)
    for run in report["runs"]:
        status = run.get("status", "?")
        colour = "green" if status == "ok" else "red"
        budget = run.get("budget") or {}
        roles = "+".join(ROLE_SHORT[r] for r in ROLE_ORDER if r in (run.get("roles") or {})) or "-"
        table.add_row(
            Text(visible(run["id"])), Text(str(status), style=colour), Text(str(run.get("stopped_by") or "-")), roles,
            str(budget.get("completions", "-")), str(budget.get("prompts", "-")), num(budget.get("flops"), "{:.3g}"),
            *(peak_cell(split_peak(run, probe, evaluation)) for evaluation in (False, True)),
            num(_value(run, "time/step_s"), "{:.2f}"),
            num(_value(run, "throughput/gen_tokens_per_s"), "{:,.0f}"), num(floor_ratio(run), "{:.1f}"),
        )
    table.caption = (f"roles: pol(icy), ref(erence), rew(ard), val(ue); peaks measured by {probe}, with the phase: "
                     "train, the highest phase that is not an evaluation; eval, the evaluation's; x floor: the phases' time "
                     "over their floors on this hardware (summary.md)")
    return table


def smoke_note(report: dict[str, Any]) -> str:
    """' (smoke run: ...)' after a smoke run's title (`rlbench run --smoke`); '' otherwise."""
    return " (smoke run: runs cut short, not a baseline)" if report.get("smoke") else ""


def accuracy_table(report: dict[str, Any]) -> Table:
    """One row per run: held-out accuracy before and after, the paired change with its interval,
    McNemar's p and the reward-hacking verdict."""
    table = Table(title=Text(f"held-out accuracy: {report['suite']['name']}"), title_justify="left")
    right = {"justify": "right", "no_wrap": True}
    for col, kw in (("run", {"no_wrap": True}), ("acc before %", right), ("acc after %", right),
                    ("Δ acc [95% CI]", right), ("p", right), ("hacking", {})):
        table.add_column(col, **kw)
    for run in report["runs"]:
        acc = run.get("accuracy") or {}
        hacking = hacking_text(run)
        table.add_row(
            Text(visible(run["id"])), accuracy_pm(acc, "before"), accuracy_pm(acc, "after"), delta_interval(acc),
            p_value_text(acc),
            Text(hacking, style="red" if hacking.startswith("FLAG") else ("yellow" if "weak" in hacking else "")),
        )
    table.caption = stderr_note(report)
    meaningless = {(run.get("accuracy") or {}).get("meaningless") for run in report["runs"]} - {None}
    if meaningless:
        table.caption += "\naccuracy " + "; ".join(sorted(meaningless))
    return table


def memory_table(report: dict[str, Any]) -> Table:
    """Role x (weights, [fp32 master,] grads, optimizer, static total, phase peak) per run, with the
    process peak, the training peak and the evaluation peak (rlbench/report/peaks.py); the master
    column appears when a run holds master weights (bf16-mixed)."""
    probe = primary_probe(report)
    table = Table(title=f"memory by role (MiB; static from tensors, peaks measured by {probe})", title_justify="left")
    masters = any((entry.get("static") or {}).get("master") for run in report["runs"]
                  for entry in (run.get("roles") or {}).values())
    columns = ("run", "role", "weights", *(("master",) if masters else ()), "grads", "optimizer", "static", "load +",
               "phase peak", "peak phase")
    for col in columns:
        table.add_column(col, justify="left" if col in ("run", "role", "peak phase") else "right")
    pad = ("",) if masters else ()
    for run in report["runs"]:
        roles = run.get("roles") or {}
        for i, role in enumerate(r for r in ROLE_ORDER if r in roles):
            entry = roles[role]
            static = entry.get("static", {})
            phases = entry.get("phases", {})
            peak_phase = max(phases, key=lambda p: phases[p]["peak_bytes"].get(probe, 0), default=None)
            table.add_row(
                Text(visible(run["id"]) if i == 0 else ""), Text(role), mib(static.get("weights")),
                *((mib(static.get("master")),) if masters else ()), mib(static.get("gradients")),
                mib(static.get("optimizer")), mib(static.get("total")), mib(entry.get("load_bytes", {}).get(probe)),
                mib(entry.get("peak_bytes", {}).get(probe)), Text(peak_phase or "-"),
            )
        recon = ((run.get("memory") or {}).get("reconciliation") or {}).get(probe)
        if recon:
            table.add_row("", "[bold]process peak[/]", "", *pad, "", "", mib(recon["static_bytes"]), "",
                          f"[bold]{mib(recon['process_peak_bytes'])}[/]", Text(str(recon["peak_phase"])))
        for name, evaluation in (("training peak", False), ("evaluation peak", True)):
            found = split_peak(run, probe, evaluation)
            if found is not None:
                table.add_row("", f"[bold]{name}[/]", "", *pad, "", "", "", "", f"[bold]{mib(found[1])}[/]",
                              Text(found[0]))
        if recon:
            table.add_row("", "other", "", *pad, "", "", "", "", mib(recon["other_bytes"]),
                          f"baseline {mib(recon['baseline_bytes'])}")
        if roles:
            table.add_section()
    return table


def rank_memory_table(report: dict[str, Any]) -> Table | None:
    """Distributed runs only: each rank's node rank and local rank (where it ran), static bytes of
    each role on each rank and their sum, the highest phase peak any rank reached, each rank's
    process peak, and collective MiB per phase."""
    runs = [run for run in report["runs"] if run.get("distributed")]
    if not runs:
        return None
    probe = primary_probe(report)
    world = max(run["distributed"]["world_size"] for run in runs)
    table = Table(title=f"memory per rank (MiB; static from each rank's shards, peaks measured by {probe}, "
                        "max over ranks)", title_justify="left")
    table.add_column("run")
    table.add_column("role")
    for rank in range(world):
        table.add_column(f"rank {rank}", justify="right")
    for col in ("sum", "max phase peak", "peak phase"):
        table.add_column(col, justify="left" if col == "peak phase" else "right")
    for run in runs:
        d = run["distributed"]
        ranks = d["ranks"] + [{}] * (world - len(d["ranks"]))
        rows: list[tuple[str, list[Any], Any, Any, str]] = [
            ("node rank / local rank", [" / ".join("-" if rank.get(k) is None else str(rank[k])
                                                   for k in ("node_rank", "local_rank")) if rank else None
                                        for rank in ranks], None, None, "")]
        for role in (r for r in ROLE_ORDER if r in d["static_bytes_sum"]):
            phases = d["phase_peak_bytes_max"].get(role, {})
            peak_phase = max(phases, key=lambda p: phases[p].get(probe, 0), default=None)
            rows.append((role, [(rank.get("static_bytes", {}).get(role) or {}).get("total") for rank in ranks],
                         d["static_bytes_sum"][role].get("total"), (phases.get(peak_phase) or {}).get(probe),
                         peak_phase or "-"))
        rows.append(("process peak", [rank.get("process_peak_bytes", {}).get(probe) for rank in ranks], None,
                     d["process_peak_bytes_max"].get(probe), ""))
        for phase in d["collective_bytes"]:
            rows.append((f"collectives: {phase}",
                         [sum(k["bytes"] for k in rank.get("collective_bytes", {}).get(phase, {}).values())
                          if rank else None for rank in ranks], None, None, ""))
        for i, (role, per_rank, total, peak, phase) in enumerate(rows):
            table.add_row(literal(run["id"]) if i == 0 else "", role,
                          *(Text(v) if isinstance(v, str) else mib(v) for v in per_rank), mib(total), mib(peak), phase)
        table.add_section()
    return table


def print_report(report: dict[str, Any], console: Console) -> None:
    console.print(memory_table(report))
    per_rank = rank_memory_table(report)
    if per_rank is not None:
        console.print(per_rank)
    console.print(summary_table(report))
    console.print(accuracy_table(report))
    seeds = seed_table(report)
    if seeds is not None:
        console.print(seeds)
    from rlbench.report.accuracy_view import arm_tables, sft_lines

    for line in sft_lines(report)[:1]:
        console.print(literal(line), highlight=False)
    for table in arm_tables(report):
        console.print(table)
    for line in warning_lines(report):
        console.print(f"[yellow]warning:[/] {literal(line)}", highlight=False)
    for run in report["runs"]:
        if run.get("status") not in ("ok", None) and run.get("error"):
            console.print(f"[red]{literal(run['id'])}[/]: {literal(run['status'])}: {literal(run['error'])}",
                          highlight=False)


def write_artifacts(report: dict[str, Any], out_dir: Path, console: Console, report_dir: Path | None = None) -> None:
    """Plots and summary.md in `out_dir` (plots need matplotlib); each run's steps.jsonl is read
    under `report_dir` (default: `out_dir`)."""
    try:
        from rlbench.report.plots import write_plots
    except ImportError:
        return
    for line in write_plots(report, out_dir, report_dir, skipped=lambda why: console.print(
            f"skipped: {why}", markup=False, highlight=False)):
        console.print(f"wrote: {line}", markup=False, highlight=False)


def report_command(path: str, console: Console, output: str | None = None) -> int:
    """`rlbench report REPORT.json`: re-print the tables, re-render plots and summary.md next to it
    (or in `output`, created if need be)."""
    from rlbench.report.schema import load_report

    report = load_report(path)
    print_report(report, console)
    out_dir = Path(path).parent if output is None else Path(output)
    if output is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--output {output}: not a directory")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--output {output}: cannot create it ({exc.strerror or exc})") from None
    write_artifacts(report, out_dir, console, report_dir=Path(path).parent)
    return 0


def run_verdict(report_path: Path) -> str:
    """The one line `rlbench run --quiet` prints: how many runs ended ok, which did not and why, and
    where the report is."""
    from rlbench.report.io import read_json

    report = read_json(report_path)
    runs = report.get("runs") or []
    bad = [r for r in runs if r.get("status") != "ok"]
    head = ("interrupted" if report.get("status") == "interrupted" else "FAIL") if bad else "ok"
    why = visible("; ".join(f"{r['id']} {r.get('status')}" + (f": {str(r['error']).splitlines()[0][:200]}"
                                                      if r.get("error") else "") for r in bad))
    return f"{head}: {len(runs) - len(bad)} of {len(runs)} run(s) ended ok" + (f" ({why})" if why else "") + \
        f"; report: {report_path}"
