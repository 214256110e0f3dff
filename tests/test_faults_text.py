"""Text from a report reaches people as the text it holds: labels and descriptions read from a report
(whose label pattern is not checked again on load) with ANSI escapes, carriage returns or a
right-to-left override are shown escaped on the terminal, in summary.md and in plots."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.report.format import literal, md_text, plot_text, visible
from rlbench.report.schema import load_report
from rlbench.report.summary import summary_markdown
from rlbench.report.views import print_report

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reports" / "ci_v2.json"
HOSTILE = "grpo\x1b[2J\x1b]8;;http://x\x07\rok\u202eevil\x9b"
RAW = ("\x1b", "\r", "\u202e", "\x07", "\x9b")


def test_visible_writes_each_control_as_its_escape() -> None:
    assert visible(HOSTILE) == "grpo\\x1b[2J\\x1b]8;;http://x\\x07\\rok\\u202eevil\\x9b"
    assert visible("é ü 中 tab\there\nline") == "é ü 中 tab\there\nline"  # text, tabs and newlines as they are
    for shown in (literal(HOSTILE), md_text(HOSTILE), plot_text(HOSTILE)):
        assert not any(c in shown for c in RAW)


@pytest.fixture
def hostile_report() -> dict:
    report = load_report(FIXTURE)
    report["suite"]["description"] = f"nightly {HOSTILE}"
    for run in report["runs"]:
        run["label"] = HOSTILE + run["label"]
        run["id"] = f"{run['label']}/seed{run['seed']}"
    return report


def test_the_terminal_tables_show_hostile_labels_escaped(hostile_report: dict) -> None:
    out = io.StringIO()
    print_report(hostile_report, Console(file=out, width=300, force_terminal=False, color_system=None))
    text = out.getvalue()
    assert "\\x1b[2J" in text  # the label is there, as its escape
    assert not any(c in text for c in RAW)


def test_summary_md_shows_hostile_labels_and_descriptions_escaped(hostile_report: dict) -> None:
    text = summary_markdown(hostile_report)
    assert "nightly" in text and "x1b" in text
    assert not any(c in text for c in RAW)
