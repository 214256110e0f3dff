"""How report figures are written in tables, plots and summary.md: one place for units and names.

Names, labels, descriptions and errors come from suite files and reports, which anyone can write:
they are shown as literal text on every surface. `literal` escapes Rich markup (a label `lab[/x]`
or `[link=...]` is printed as typed, never interpreted), `md_text` escapes Markdown and HTML for
summary.md and `compare --format md` (no raw `<img onerror>`, no `[..](javascript:..)` link), and
plots escape matplotlib's mathtext (`$`) in rlbench/report/plots.py. All three also show control
characters as escapes (`visible`): an ANSI sequence, a carriage return or a bidirectional override
(U+202E) in a label or description read from a report never reaches a terminal or a file raw.
"""

from __future__ import annotations

import re
from typing import Any

from rich.markup import escape as _rich_escape

ROLE_ORDER = ("policy", "reference", "reward", "value", "rollout")
ROLE_SHORT = {"policy": "pol", "reference": "ref", "reward": "rew", "value": "val", "rollout": "eng"}
# Phases of one RL step in the order they run, then evaluation; names as in `time/<phase>_s`.
PHASE_ORDER = ("generate", "score", "ref_logprobs", "values", "advantages", "update", "value_update", "eval")


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def pct(x: float | None, se: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{x:.1%}" + (f" ± {se:.1%}" if se is not None else "")


def num(x: float | None, fmt: str = "{:,.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_value(value: float | None, unit: str, signed: bool = False) -> str:
    """A metric's value for people: bytes in MiB, fractions in percent (points when `signed`, for a
    change), seconds with 3 decimals, rates with a k/M/G prefix."""
    if value is None:
        return "-"
    sign = "+" if signed else ""
    if unit == "bytes":
        return f"{value / 2**20:{sign},.1f} MiB"
    if unit == "fraction":
        return f"{value * 100:{sign}.1f} pts" if signed else f"{value:.1%}"
    if unit == "s":
        return f"{value:{sign}.3f} s"
    if unit == "1/s":
        for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= factor:
                return f"{value / factor:{sign}.2f} {prefix}/s"
        return f"{value:{sign}.1f}/s"
    return f"{value:{sign}.4g}"


def format_change(delta: float | None, relative: float | None, unit: str) -> str:
    """'+2.0 MiB, +20.0%': a change in the metric's unit, then relative to the baseline where defined."""
    if delta is None:
        return "-"
    return format_value(delta, unit, signed=True) + (f", {relative:+.1%}" if relative is not None else "")


def _value(run: dict[str, Any], name: str) -> float | None:
    entry = (run.get("metrics") or {}).get(name)
    return None if entry is None else entry.get("value")


def pct_pm(x: float | None, se: float | None) -> str:
    """'21.9±1.8' (percent)."""
    if x is None:
        return "-"
    return f"{x * 100:.1f}" + (f"±{se * 100:.1f}" if se is not None else "")


def delta_points(accuracy: dict[str, Any]) -> str:
    """A run's accuracy change in points, '+3.1' (' *' when larger than the sum of the standard errors)."""
    delta = accuracy.get("delta")
    if delta is None:
        return "-"
    return f"{delta * 100:+.1f}" + (" *" if accuracy.get("significant") else "")


def accuracy_pm(accuracy: dict[str, Any], side: str) -> str:
    """Accuracy before or after RL in percent ± its standard error: clustered by the task's key
    where the per-problem outcomes were kept (`accuracy.paired`), else binomial."""
    entry = accuracy.get(side) or {}
    se = (accuracy.get("paired") or {}).get(f"{side}_stderr")
    return pct_pm(entry.get("eval/accuracy"), se if se is not None else entry.get("eval/accuracy_stderr_binomial"))


def delta_interval(accuracy: dict[str, Any]) -> str:
    """The change of accuracy in points with its paired 95% interval, '+3.1 [+1.2, +5.0]'; a report
    without per-problem outcomes gives delta_points' '+3.1 *'."""
    paired = accuracy.get("paired")
    if not paired or accuracy.get("delta") is None:
        return delta_points(accuracy)
    ci = paired.get("ci95")
    return f"{accuracy['delta'] * 100:+.1f}" + (f" [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]" if ci else "")


def p_value_text(accuracy: dict[str, Any]) -> str:
    """The McNemar p-value of a run's change of accuracy: '0.070', '<0.001', or '-'."""
    p = (accuracy.get("paired") or {}).get("p_value")
    return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def stderr_note(report: dict[str, Any]) -> str:
    """How the accuracy standard errors of a report were computed, in one sentence."""
    paired = [(run.get("accuracy") or {}).get("paired") for run in report["runs"]]
    paired = [p for p in paired if p]
    if not paired:
        return ("accuracy: greedy pass@1 ± binomial standard error; Δ acc in points, marked * when larger than "
                "the sum of the two standard errors")
    first = paired[0]
    by = first.get("cluster_by", "problem")
    clusters = (f"each its own cluster, {first['n']:,} problems" if by == "problem"
                else f"{first['clusters']:,} clusters among {first['n']:,} problems")
    return (f"accuracy: greedy pass@1 ± standard error clustered by {by} ({clusters}); Δ acc: after - before "
            "in points with its paired 95% interval (clustered, t on clusters - 1 degrees of freedom); "
            "p: exact McNemar test on the problems that changed")


def hacking_text(run: dict[str, Any]) -> str:
    """A run's reward-hacking verdict for a table cell: 'FLAG', 'no' or '-', with ', weak RM' when it
    optimised a reward model too weak to trust."""
    hacking = run.get("reward_hacking")
    text = "-" if not hacking else ("FLAG" if hacking.get("flag") else "no")
    return text + (", weak RM" if run.get("reward_model_warning") else "")


def warning_lines(report: dict[str, Any]) -> list[str]:
    """Plain-text warnings under the run table: a weak reward model, and why each flagged run was
    flagged (the hacking explanation, which cites a weak reward model)."""
    lines = []
    weak = ((report.get("stages") or {}).get("reward_model") or {}).get("weak")
    if weak:
        lines.append(f"weak reward model: {weak}")
    for run in report["runs"]:
        hacking = run.get("reward_hacking") or {}
        if hacking.get("flag") and hacking.get("explanation"):
            lines.append(f"{run['id']}: reward hacking: {hacking['explanation']}")
    return lines


def primary_probe(report: dict[str, Any]) -> str:
    for run in report["runs"]:
        memory = run.get("memory")
        if memory:
            return memory["primary"]
    return "cpu"


# C0 and C1 controls (ESC, CR, BEL, ...), DEL, and the bidirectional marks and overrides that
# reorder what a reader sees; newlines and tabs are kept where the surface allows them.
_UNSEEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: Any) -> str:
    """`text` with every control character and bidirectional override written as its escape
    (`\x1b`, `\r`, `\u202e`), so the text shows what it holds and cannot move the cursor, colour
    the terminal or reverse what follows it."""
    return _UNSEEN.sub(lambda m: repr(m.group())[1:-1] if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       str(text))


def plot_text(text: Any) -> str:
    """Report text for matplotlib, shown literally: every `$` escaped, so no mathtext is parsed."""
    return visible(text).replace("$", r"\$")


def literal(text: Any) -> str:
    """`text` for a Rich console or table cell: markup escaped, control characters as escapes,
    printed exactly as written."""
    return _rich_escape(visible(text))


_MD_INLINE = re.compile(r"([\\`*_\[\]|~$])")  # emphasis, code, links and images, table cells, strikethrough, math
_MD_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def md_text(text: Any, block: bool = False) -> str:
    """`text` for Markdown: HTML characters as entities, Markdown punctuation backslash-escaped, one line.

    Renders as the literal text in GitHub, CommonMark and mkdocs: no tag, link, image, emphasis,
    math or table cell boundary can come from it. `block`: the text starts a paragraph, so a
    leading list marker or heading mark is escaped too.
    """
    out = visible(" ".join(str(text).split()))  # newlines would end a table row or start a block
    out = _MD_INLINE.sub(r"\\\1", out)
    out = "".join(_MD_HTML.get(c, c) for c in out)
    if block:
        if out[:1] in ("-", "+", "=", "#"):
            out = "\\" + out
        out = re.sub(r"^(\d+)([.)])(?=\s|$)", r"\1\\\2", out)  # "1." would start an ordered list
    return out


class Markdown(str):
    """Text already written as Markdown by rlbench itself (bold, code): `markdown_table` keeps it as is."""


def markdown_table(columns: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A GitHub-flavoured Markdown table of literal text (`md_text`; `Markdown` cells kept as
    written); the columns in `right` right-aligned (default: the columns of numbers)."""
    def cell(text: str) -> str:
        return text if isinstance(text, Markdown) else md_text(text)

    def numeric(i: int) -> bool:
        cells = [row[i] for row in rows if row[i] not in ("", "-")]
        return bool(cells) and all(c.lstrip("*")[:1] in "0123456789+-" for c in cells)

    align = ["---:" if (i in right if right is not None else numeric(i)) else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
