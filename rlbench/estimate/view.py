"""Views of an estimate: a Rich table per algorithm (phase x role, by kind) and one JSON document."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from rlbench.estimate import SuiteEstimate
from rlbench.estimate.predict import STATIC_KINDS
from rlbench.estimate.trace import KINDS, ROLES

GIB, MIB = 2**30, 2**20
KIND_HEADERS = {"weights": "weights", "gradients": "grads", "optimizer": "optim", "activations": "activ",
                "logits": "logits", "kv_cache": "KV", "gathered": "gathered"}


def as_json(estimate: SuiteEstimate, card: tuple[float, str] | None, headroom: dict[str, Any] | None,
            headroom_field: str | None, sizing: dict[str, Any] | None = None) -> dict[str, Any]:
    from rlbench.estimate.fit import verdict

    algorithms = []
    for algo in estimate.algorithms:
        entry = algo.as_dict()
        if card is not None and not algo.error:
            entry["fit"] = verdict(algo, estimate.suite, card[0])
        if headroom is not None:
            entry["headroom"] = {"field": headroom_field, **headroom.get(algo.label, {})}
        if sizing is not None:
            entry["sizing"] = sizing.get(algo.label)
        algorithms.append(entry)
    from rlbench.estimate.gpus import MARGIN

    card_entry = None if card is None else {"name": card[1], "gib": card[0], "margin": MARGIN}
    return {"settings": estimate.settings(), "card": card_entry,
            "algorithms": algorithms, "seconds": round(estimate.seconds, 2), "notes": estimate.notes,
            "units": "bytes"}


def _fmt(value: int, scale: int) -> str:
    return "" if value < scale / 200 else f"{value / scale:,.2f}"  # blank rather than 0.00


def _phase_rows(by_role: dict[str, dict[str, int]], scale: int) -> list[tuple[str, dict[str, int]]]:
    """The rows of one phase: every role's static state summed in one row, then each role whose
    activations, logits or KV cache show (the JSON keeps every role's every kind)."""
    static = {k: sum(kinds.get(k, 0) for kinds in by_role.values()) for k in STATIC_KINDS}
    rows = [("static (all roles)", static)]
    for role in ROLES:
        transient = {k: v for k, v in by_role.get(role, {}).items() if k not in STATIC_KINDS}
        if sum(transient.values()) >= scale / 200:  # what would show as 0.00 is left out
            rows.append((role, transient))
    return rows


def _sizing_line(s: dict[str, Any], card: tuple[float, str]) -> str:
    """The sizing answers of one algorithm (`rlbench.estimate.sizing`) in one line."""
    n = s["smallest_ranks"]
    if n is None and s.get("note"):
        return f"no rank count fits {card[1]}: {s['note']}"
    if n is None:
        tried = ", ".join(f"{k}: {v / GIB:,.1f} GiB" for k, v in s["required_bytes_by_ranks"].items())
        return f"no power-of-two rank count up to the step's split fits {card[1]} (per rank {tried})"
    value = s["largest_completions_per_step"]
    batch = (f"largest completions_per_step that fits there: {value:,}" + (" (the search's cap)" if s.get("capped") else "")
             if value else "no completions_per_step fits there")
    if value and s.get("batch_by_line"):
        batch += f" (traced; {value + s['completions_step']:,} predicted not to by the line through its estimates)"
    return f"smallest rank count that fits: {n} x {card[1]}; {batch}"


def print_estimate(estimate: SuiteEstimate, console: Console, card: tuple[float, str] | None,
                   headroom: dict[str, Any] | None, headroom_field: str | None,
                   sizing: dict[str, Any] | None = None) -> None:
    from rlbench.estimate.fit import DEVICE_OVERHEAD_GIB, verdict
    from rlbench.estimate.gpus import MARGIN

    s = estimate.settings()
    largest = max(a.process_peak_bytes for a in estimate.algorithms)
    unit, scale = ("GiB", GIB) if largest >= GIB else ("MiB", MIB)
    precision = f", precision {s['precision']}" if s["precision"] else ""
    console.print(f"[bold]{s['model']}[/] ({s['architecture']}, {s['parameters'] / 1e6:,.1f}M parameters, "
                  f"{s['layers']} layers, vocabulary {s['vocab_size']:,}), {s['dtype']}{precision}"
                  f"{', LoRA' if s['lora'] else ''}{', gradient checkpointing' if s['gradient_checkpointing'] else ''}",
                  highlight=False)
    console.print(f"worst case: {s['completions_per_step']} completions per step (groups of {s['group_size']}), "
                  f"prompts of {s['prompt_tokens']} tokens ({s['prompt_tokens_from']}), every completion "
                  f"{s['max_new_tokens']} new tokens; eval batches of {s['eval_batch_size']}; traced on "
                  f"{s['traced_on']} kernels in {estimate.seconds:.1f} s", highlight=False, soft_wrap=True)
    for algo in estimate.algorithms:
        if algo.error:
            console.print(f"[red]{algo.label}: rlbench's code raised {algo.error}[/] while traced (a run with these "
                          "settings is likely to fail the same way)", highlight=False, soft_wrap=True)
            continue
        per = f" per rank of {estimate.ranks} (FSDP2)" if estimate.ranks > 1 else ""
        table = Table(title=f"{algo.label}: predicted peak of live tensors per phase{per} ({unit})",
                      title_justify="left")
        for col in ("phase", "role", *(KIND_HEADERS[k] for k in KINDS), "peak", "transient"):
            table.add_column(col, justify="left" if col in ("phase", "role") else "right")
        for name, phase in algo.phases.items():
            peak = f"[bold]{phase.peak_bytes / scale:,.2f}[/]" if name == algo.peak_phase else _fmt(phase.peak_bytes, scale)
            rows = _phase_rows(phase.by_role, scale)
            for i, (role, kinds) in enumerate(rows):
                table.add_row(name if i == 0 else "", role, *(_fmt(kinds.get(k, 0), scale) for k in KINDS),
                              peak if i == 0 else "", _fmt(phase.transient_bytes, scale) if i == 0 else "")
            table.add_section()
        console.print(table)
        static = ", ".join(f"{role} {algo.static[role]['total'] / scale:,.2f}" for role in ROLES if role in algo.static)
        rank = " per rank" if estimate.ranks > 1 else ""
        line = (f"process peak{rank} {algo.process_peak_bytes / scale:,.2f} {unit} in {algo.peak_phase}; "
                f"static {unit}{rank} by role: {static}")
        if card is not None:
            v = verdict(algo, estimate.suite, card[0])
            word = "[green]fits[/]" if v["fits"] else "[red]does not fit[/]"
            name = f"a {card[1]} card" if card[1].endswith(" GiB") else f"{card[1]} ({card[0]:g} GiB)"
            on = f" on {estimate.ranks} ranks" if estimate.ranks > 1 else ""
            line += (f"\n{name}{on}: {word} with a {MARGIN:.0%} margin, needs {v['required_bytes'] / GIB:,.2f} GiB "
                     f"with {DEVICE_OVERHEAD_GIB:g} GiB of device overhead of {v['usable_bytes'] / GIB:,.2f} GiB usable "
                     f"({v['margin_bytes'] / GIB:+,.2f} GiB)")
        if sizing is not None and algo.label in sizing:
            line += "\n" + _sizing_line(sizing[algo.label], card)
        if headroom is not None:
            h = headroom.get(algo.label, {})
            found = h.get("note") or (f"largest {headroom_field} that fits: {h['value']}" if h.get("value")
                                      else f"no {headroom_field} fits")
            line += f"\n{found}" + (f" ({h['probes']} estimates)" if h.get("probes") else "")
        console.print(line, highlight=False)
    console.print("peak: live tensors at the phase's highest point (static state of every role, then what each role's "
                  "phase work holds); transient: how far the phase rose above its start, less the gradients and "
                  "optimizer state it created (static from then on)", highlight=False, soft_wrap=True)
    for note in estimate.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
