"""Plots and summary.md next to report.json: views of the report, re-rendered by `rlbench report`.

- memory_by_role.png: one stacked bar per run. Each role (policy, reference, reward, value,
  rollout) contributes its static bytes (weights, gradients, optimizer state, computed from its
  tensors; solid) and the measured transient of the phase where that role peaked (activations,
  logits and temporaries: the rise above the phase's start; hatched). The black tick marks the
  measured process peak above the baseline (what was there before any model was loaded), the
  figure that decides whether a run fits. Transients of different phases do not coexist, so the
  stack can exceed the tick: the bar says what each role costs, the tick what the process held.
  This is the lecture's PPO vs GRPO vs GRPO-Zero memory picture, measured.
- curves.png: proxy reward (what the run optimised) and gold accuracy (the answer checker) per
  step, from each run's steps.jsonl, and held-out accuracy points with standard errors, all
  against completions consumed.
- summary.md: the report's tables in Markdown.

matplotlib draws with the Agg backend through `Figure` objects: no display, no global state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from rlbench.report.format import ROLE_ORDER, mib, num, pct, primary_probe

ROLE_COLOURS = {"policy": "#1f77b4", "reference": "#7f7f7f", "reward": "#d62728", "value": "#2ca02c",
                "rollout": "#9467bd"}
MIB = 2**20


def role_segments(run: dict[str, Any], probe: str) -> list[tuple[str, int, int, str | None]]:
    """(role, static bytes, transient bytes of its peak phase, that phase) for each role of a run."""
    out = []
    roles = run.get("roles") or {}
    for role in [r for r in ROLE_ORDER if r in roles] + [r for r in roles if r not in ROLE_ORDER]:
        entry = roles[role]
        phases = entry.get("phases") or {}
        measured = {p: ph for p, ph in phases.items() if probe in (ph.get("peak_bytes") or {})}
        peak_phase = max(measured, key=lambda p: measured[p]["peak_bytes"][probe], default=None)
        transient = (measured[peak_phase].get("rise_bytes") or {}).get(probe, 0) if peak_phase else 0
        out.append((role, int(entry["static"]["total"]), max(int(transient), 0), peak_phase))
    return out


def process_peak_above_baseline(run: dict[str, Any], probe: str) -> int | None:
    recon = ((run.get("memory") or {}).get("reconciliation") or {}).get(probe)
    if not recon:
        return None
    return recon["process_peak_bytes"] - recon["baseline_bytes"]


def memory_figure(report: dict[str, Any]) -> Figure:
    """Stacked bars of static + peak-phase transient bytes per role, one bar per run."""
    probe = primary_probe(report)
    runs = report["runs"]
    fig = Figure(figsize=(max(8.5, 1.6 * len(runs) + 4.0), 5.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = 0.0
    tallest = max([_axis_guess(report, probe)] + [(process_peak_above_baseline(r, probe) or 0) / MIB for r in runs])
    roles_seen: list[str] = []
    for x, run in enumerate(runs):
        bottom = 0.0
        for role, static, transient, phase in role_segments(run, probe):
            colour = ROLE_COLOURS.get(role, "#8c564b")
            if role not in roles_seen:
                roles_seen.append(role)
            ax.bar(x, static / MIB, bottom=bottom, color=colour, edgecolor="black", linewidth=0.5, width=0.6)
            bottom += static / MIB
            if transient:
                ax.bar(x, transient / MIB, bottom=bottom, color=colour, alpha=0.35, hatch="//",
                       edgecolor=colour, linewidth=0.5, width=0.6)
                if transient / MIB > 0.09 * tallest:
                    ax.text(x, bottom + transient / MIB / 2, f"{role}\n{phase}", ha="center", va="center", fontsize=7)
                bottom += transient / MIB
        peak = process_peak_above_baseline(run, probe)
        label_y = bottom
        if peak is not None:
            ax.hlines(peak / MIB, x - 0.38, x + 0.38, colors="black", linewidth=2.5)
            ax.text(x + 0.4, peak / MIB, f"{peak / MIB:,.0f}", ha="left", va="center", fontsize=7)
            top = max(top, peak / MIB)
            if bottom <= peak / MIB <= bottom + 0.12 * tallest:  # keep the bar's label clear of the tick
                label_y = peak / MIB
        static_total = sum(static for _, static, _, _ in role_segments(run, probe))
        label = (f"{bottom:,.0f} MiB\n(static {static_total / MIB:,.1f})" if run.get("roles")
                 else str(run.get("status", "?")))
        top = max(top, bottom)
        ax.text(x, label_y, label, ha="center", va="bottom", fontsize=8,
                color="black" if run.get("status") == "ok" else "red")
    ax.set_xticks(range(len(runs)), [_run_tick(r) for r in runs], fontsize=9)
    ax.set_xlim(-0.6, len(runs) - 0.4)
    ax.set_ylim(0, top * 1.2 or 1)
    ax.set_xlabel("run (label/seed, roles held)")
    ax.set_ylabel("memory (MiB)")
    ax.set_title(f"{report['suite']['name']}: memory by role ({probe} probe)\n"
                 "static bytes (solid) + transient of each role's peak phase (hatched)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=ROLE_COLOURS.get(r, "#8c564b"), edgecolor="black", label=f"{r}: static")
               for r in roles_seen]
    handles += [Patch(facecolor="white", edgecolor="black", hatch="//", label="transient of the role's peak phase"),
                Patch(facecolor="black", label="process peak above baseline")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _axis_guess(report: dict[str, Any], probe: str) -> float:
    """Tallest bar in MiB, to decide which segments are tall enough to label."""
    tallest = 0.0
    for run in report["runs"]:
        tallest = max(tallest, sum(s + t for _, s, t, _ in role_segments(run, probe)) / MIB)
    return tallest or 1.0


def _run_tick(run: dict[str, Any]) -> str:
    roles = run.get("roles") or {}
    held = "+".join(r[:3] if r != "reference" else "ref" for r in ROLE_ORDER if r in roles)
    return run["id"] + (f"\n{held}" if held else "") + ("" if run.get("status") == "ok" else f"\n({run.get('status')})")


def read_steps(report_dir: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's per-step metrics from <report dir>/<run_dir>/steps.jsonl ([] when absent)."""
    if not run.get("run_dir"):
        return []
    path = report_dir / run["run_dir"] / "steps.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut off by a crash ends the usable part
    return rows


def curves_figure(report: dict[str, Any], report_dir: Path) -> Figure:
    """Proxy reward and gold accuracy per step (left) and held-out accuracy (right) against completions."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    train_ax, eval_ax = fig.subplots(1, 2)
    colours = [f"C{i}" for i in range(10)]
    for i, run in enumerate(report["runs"]):
        colour = colours[i % len(colours)]
        steps = read_steps(report_dir, run)
        if steps:
            x = [s["completions"] for s in steps]
            train_ax.plot(x, [s["reward/mean"] for s in steps], color=colour, marker=".",
                          label=f"{run['id']} proxy reward")
            train_ax.plot(x, [s["gold/accuracy"] for s in steps], color=colour, linestyle="--", marker="x",
                          label=f"{run['id']} gold accuracy")
        curve = (run.get("accuracy") or {}).get("curve") or run.get("evals") or []
        points = [e for e in curve if "completions" in e and "eval/accuracy" in e]
        if points:
            eval_ax.errorbar([e["completions"] for e in points], [e["eval/accuracy"] for e in points],
                             yerr=[e.get("eval/accuracy_stderr", 0.0) for e in points], color=colour, marker="o",
                             capsize=3, label=run["id"])
    train_ax.set_xlabel("completions consumed")
    train_ax.set_ylabel("per-step mean (reward; fraction correct)")
    train_ax.set_title("training: proxy reward (solid) vs gold accuracy (dashed)", fontsize=10)
    eval_ax.set_xlabel("completions consumed")
    eval_ax.set_ylabel("held-out accuracy (greedy pass@1)")
    eval_ax.set_title("held-out accuracy ± standard error", fontsize=10)
    for ax in (train_ax, eval_ax):
        low, high = ax.get_ylim()
        if low > -0.05 and ax.has_data():  # fractions and rule rewards: keep 0 in view, and some headroom
            ax.set_ylim(-0.02, max(high, 0.1) * 1.1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{report['suite']['name']}: reward and accuracy against budget consumed", fontsize=11)
    return fig


def summary_markdown(report: dict[str, Any]) -> str:
    """The report's runs, memory per role and accuracy as Markdown tables."""
    from rlbench.report.compare import markdown_table

    probe = primary_probe(report)
    env = report.get("environment") or {}
    gpu = (env.get("gpu") or {}).get("name")
    git = env.get("git") or {}
    lines = [f"# rlbench: {report['suite']['name']}", "",
             report["suite"].get("description") or "", "",
             f"- created {report['created']}, status {report['status']}",
             f"- device: {gpu or env.get('cpu')} ({env.get('cpu_cores')} CPU cores); memory probe `{probe}`",
             f"- git {git.get('commit') or 'unknown'}" + (" (dirty)" if git.get("dirty") else ""),
             f"- budget: {_budget_text(report['suite'].get('budget') or {})}", "", "## runs", ""]
    rows = []
    for run in report["runs"]:
        metrics = run.get("metrics") or {}
        acc = run.get("accuracy") or {}
        budget = run.get("budget") or {}
        rows.append([
            run["id"], run.get("status", "?"), run.get("stopped_by") or "-",
            ", ".join(r for r in ROLE_ORDER if r in (run.get("roles") or {})) or "-",
            str(budget.get("completions", "-")),
            mib(_value(metrics, "memory/process_peak_bytes")),
            num(_value(metrics, "time/step_s"), "{:.2f}"),
            num(_value(metrics, "throughput/gen_tokens_per_s"), "{:,.0f}"),
            _acc(acc.get("before") or {}), _acc(acc.get("after") or {}),
            "-" if acc.get("delta") is None else f"{acc['delta']:+.1%}" + (" *" if acc.get("significant") else ""),
            "-" if not run.get("reward_hacking") else ("FLAG" if run["reward_hacking"]["flag"] else "no"),
        ])
    lines.append(markdown_table(["run", "status", "stopped by", "roles", "completions", f"peak MiB ({probe})",
                                 "step s", "gen tok/s", "acc before", "acc after", "Δ acc", "hacking"], rows))
    lines += ["", "Δ acc marked * when larger than the sum of the two standard errors.", "",
              f"## memory by role (MiB; static from tensors, phase peaks measured by {probe})", ""]
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
            rows.append([run["id"], "**process peak**", "", "", "", mib(recon["static_bytes"]), recon["peak_phase"],
                         mib(recon["peak_phase_transient_bytes"]), f"**{mib(recon['process_peak_bytes'])}**"])
            rows.append([run["id"], "other (libraries, allocator)", "", "", "", "", "", "", mib(recon["other_bytes"])])
            rows.append([run["id"], "baseline (before loading)", "", "", "", "", "", "", mib(recon["baseline_bytes"])])
    lines.append(markdown_table(["run", "role", "weights", "grads", "optimizer", "static", "peak phase",
                                 "phase transient", "phase peak"], rows))
    failed = [r for r in report["runs"] if r.get("status") != "ok"]
    if failed:
        lines += ["", "## runs that did not end ok", ""]
        lines += [f"- `{r['id']}`: {r.get('status')}: {r.get('error') or 'no error recorded'}" for r in failed]
    lines += ["", "![memory by role](memory_by_role.png)", "", "![reward and accuracy](curves.png)", ""]
    return "\n".join(lines)


def _budget_text(budget: dict[str, Any]) -> str:
    limits = [f"{k} {v}" for k, v in budget.items() if v is not None]
    return ", ".join(limits) or "none"


def _value(metrics: dict[str, Any], name: str) -> float | None:
    return (metrics.get(name) or {}).get("value")


def _acc(evaluation: dict[str, Any]) -> str:
    return pct(evaluation.get("eval/accuracy"), evaluation.get("eval/accuracy_stderr"))


def write_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Render memory_by_role.png, curves.png and summary.md into `out_dir` (the report's directory,
    where each run's run_dir is found); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in (("memory_by_role.png", memory_figure(report)), ("curves.png", curves_figure(report, out_dir))):
        fig.savefig(out_dir / name, dpi=120)
        paths.append(out_dir / name)
    summary = out_dir / "summary.md"
    summary.write_text(summary_markdown(report))
    paths.append(summary)
    return paths
