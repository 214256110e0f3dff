"""Names, labels, descriptions and errors are shown as literal text on every surface: Rich markup is
not interpreted in the terminal (`lab[/x]` crashed with MarkupError, `[link=...]` made a clickable
link), summary.md and `compare --format md` carry no raw HTML or Markdown link, and plots do not
parse mathtext (`$\\foo{$` crashed). The reports are a real report of suites/ci.yaml with its
labels, description and error replaced by those cases."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from matplotlib import cbook
from rich.console import Console

from rlbench.cli import main
from rlbench.report.compare import Selection, compare_command
from rlbench.report.format import literal, md_text
from rlbench.report.plots import curves_figure, memory_figure
from rlbench.report.summary import summary_markdown
from rlbench.report.views import print_report, report_command

REPORTS = Path(__file__).parent / "fixtures" / "reports"
CLOSING_TAG = "lab[/x]"
LINK = "[link=https://example.com/x]click[/link]"
MATH = "$\\foo{$"
IMG = "<img src=x onerror=alert(1)>"
JS = "[x](javascript:alert(1))"


def hostile_report(tmp_path: Path) -> Path:
    """ci_ok.json laid out with its steps, the two runs relabelled `lab[/x]` and `$\\foo{$`, the suite
    named with a link, described with HTML and a javascript: link, and an error with markup."""
    report = json.loads((REPORTS / "ci_ok.json").read_text())
    report["suite"]["name"] = LINK
    report["suite"]["description"] = f"{IMG} {JS} **bold**"
    for run, label in zip(report["runs"], (CLOSING_TAG, MATH)):
        old_dir = run["run_dir"]
        run["label"], run["id"] = label, f"{label}/seed0"
        run_dir = tmp_path / old_dir
        run_dir.mkdir(parents=True)
        shutil.copy(REPORTS / "steps" / "ci_ok" / f"{Path(old_dir).name}.jsonl", run_dir / "steps.jsonl")
    report["runs"][1]["status"], report["runs"][1]["error"] = "failed", f"boom [bold]{IMG}[/bold] {JS}"
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def terminal() -> Console:
    return Console(record=True, width=250, force_terminal=True, color_system="truecolor")


def test_literal_and_md_text() -> None:
    assert Console(width=80).render_str(literal(CLOSING_TAG)).plain == CLOSING_TAG
    assert Console(width=80).render_str(literal(LINK)).plain == LINK
    trailing = "ends with a backslash \\"
    assert Console(width=80).render_str("[red]" + literal(trailing) + "[/]").plain == trailing
    assert md_text(IMG) == "&lt;img src=x onerror=alert(1)&gt;"
    assert md_text(JS) == "\\[x\\](javascript:alert(1))"
    assert md_text("a|b *c* _d_ `e` $f$ ~g~") == "a\\|b \\*c\\* \\_d\\_ \\`e\\` \\$f\\$ \\~g\\~"
    assert md_text("- item", block=True) == "\\- item" and md_text("1. one", block=True) == "1\\. one"
    assert md_text("-0.9 MiB") == "-0.9 MiB" and md_text("line\nbreak") == "line break"


def test_terminal_tables_print_labels_as_typed(tmp_path: Path) -> None:
    report = json.loads(hostile_report(tmp_path).read_text())
    console = terminal()
    print_report(report, console)
    text = console.export_text()
    assert CLOSING_TAG + "/seed0" in text and MATH + "/seed0" in text and LINK in text
    assert f"boom [bold]{IMG}[/bold] {JS}" in text
    assert "\x1b]8;" not in console.export_text(styles=True)  # no terminal hyperlink (OSC 8)


def test_compare_prints_labels_as_typed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = str(hostile_report(tmp_path))
    console = terminal()
    assert compare_command([path, path], "table", console, Selection(all=True)) == 0
    text = console.export_text()
    assert CLOSING_TAG + "/seed0" in text and MATH + "/seed0" in text and LINK in text
    assert "\x1b]8;" not in console.export_text(styles=True)
    capsys.readouterr()
    assert compare_command([path, path], "md", Console(width=250), Selection(all=True)) == 0
    out = capsys.readouterr().out
    assert "[/x]" not in out and "lab\\[/x\\]/seed0" in out


def test_summary_markdown_has_no_raw_html_or_links(tmp_path: Path) -> None:
    summary = summary_markdown(json.loads(hostile_report(tmp_path).read_text()))
    assert "<img" not in summary and "**bold**" not in summary
    assert not re.search(r"(?<!\\)\]\(javascript:", summary)  # a link needs an unescaped ](
    assert "&lt;img src=x onerror=alert(1)&gt; \\[x\\](javascript:alert(1)) \\*\\*bold\\*\\*" in summary
    assert "# rlbench: \\[link=https://example.com/x\\]click\\[/link\\]" in summary
    assert "| lab\\[/x\\]/seed0 | ok |" in summary and "| \\$\\\\foo{\\$/seed0 | failed |" in summary
    # the only images and bold text are rlbench's own
    assert summary.count("![") == 3  # memory_by_role.png, curves.png, tradeoffs.png
    ours = ("| **process peak** |", "| **training peak** |", "| **evaluation peak** |")  # rlbench's own rows
    assert all(any(row in line for row in ours) for line in summary.splitlines() if "**" in line)


def test_plots_draw_labels_without_mathtext(tmp_path: Path) -> None:
    path = hostile_report(tmp_path)
    report = json.loads(path.read_text())
    memory = memory_figure(report)
    curves = curves_figure(report, path.parent)
    for fig in (memory, curves):
        fig.savefig(io.BytesIO(), format="png", dpi=40)  # `$\foo{$` as mathtext raised ValueError here
    ticks = [t.get_text() for t in memory.axes[0].get_xticklabels()]
    assert ticks[1].startswith("\\$\\foo{\\$/seed0")
    legend = [t.get_text() for t in curves.axes[7].get_legend().get_texts()]
    assert legend[1].startswith("\\$\\foo{\\$/seed0")
    for text in [*ticks, *legend, memory.axes[0].get_title(), curves.texts[0].get_text()]:
        assert not cbook.is_math_text(text), text


def test_report_command_on_hostile_labels(tmp_path: Path) -> None:
    path = hostile_report(tmp_path)
    console = terminal()
    assert report_command(str(path), console) == 0
    assert (path.parent / "summary.md").exists() and (path.parent / "curves.png").stat().st_size > 0


def test_validate_prints_a_markup_label_literally(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: markup\nalgorithms:\n  - name: grpo_zero\n    label: 'lab[/x]'\n"
                     "  - name: grpo_zero\n    label: '[link=https://example.com]click'\nbudget: {steps: 1}\n")
    code = main(["validate", str(suite)])
    out = capsys.readouterr()
    assert code != 1, out.err  # MarkupError was exit 1; a label refused as a path component is exit 2
    printed = out.out + out.err
    assert "lab[/x]" in printed
    assert "Traceback" not in printed
