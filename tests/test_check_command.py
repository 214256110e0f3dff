"""`check_command`, the gate's entry point, called as a program calls it: its defaults (settings must
match, hardware may differ), where its warnings go, what it names of each machine, and output that
stays plain text on a terminal (no highlighter colours inside a warning or a JSON document).
Real saved reports from tests/fixtures: ci_ok and ci_v2 were run with two different settings and on
different machines; ci_failed_run has ci_ok's settings on another machine."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from rlbench.errors import UserError
from rlbench.report.check import check_command
from rlbench.report.machine import fingerprint_text
from rlbench.report.mismatch import setting_differences
from rlbench.report.schema import load_report

REPORTS = Path(__file__).parent / "fixtures" / "reports"
OK, V2, FAILED = (str(REPORTS / f"{name}.json") for name in ("ci_ok", "ci_v2", "ci_failed_run"))


def terminal() -> Console:
    """A console that writes colour codes, as on a terminal."""
    return Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=400)


def test_by_default_unlike_settings_are_refused_and_other_hardware_is_allowed() -> None:
    assert len(setting_differences(load_report(V2), load_report(OK))) == 2
    with pytest.raises(UserError, match="were run with different settings"):
        check_command(V2, OK, [], terminal())
    assert check_command(FAILED, OK, [], terminal()) in (0, 1)  # other hardware: checked, not refused


def test_the_mismatch_warning_goes_to_the_console_without_an_err_and_stays_plain() -> None:
    console = terminal()
    check_command(V2, OK, [], console, allow_mismatch=True)
    text = console.file.getvalue()
    # "(2; ...)" as written: the highlighter would colour the 2
    assert "the reports were run with different settings (2; --allow-mismatch)" in text
    for line in (d.describe() for d in setting_differences(load_report(V2), load_report(OK))):
        assert f"  {line}" in text


def test_no_warning_without_differences_or_when_quiet() -> None:
    console = terminal()
    check_command(OK, OK, [], console)
    assert "different settings" not in console.file.getvalue()
    console = terminal()
    check_command(V2, OK, [], console, allow_mismatch=True, quiet=True)
    assert "different settings" not in console.file.getvalue()


def test_each_report_is_named_with_its_machine() -> None:
    console = Console(file=io.StringIO(), width=400)
    check_command(V2, OK, [], console, allow_mismatch=True)
    text = console.file.getvalue()
    assert f"new:      {fingerprint_text(load_report(V2)['environment'])}" in text
    assert f"baseline: {fingerprint_text(load_report(OK)['environment'])}" in text
    assert fingerprint_text(load_report(V2)["environment"]) != fingerprint_text({})


def test_a_json_document_on_a_terminal_is_still_json() -> None:
    console = terminal()
    check_command(OK, OK, [], console, fmt="json")
    assert isinstance(json.loads(console.file.getvalue()), dict)  # colour codes would make it unreadable


def test_with_an_output_file_it_holds_the_tables_and_the_console_the_verdict(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=400)
    out = tmp_path / "check.txt"
    assert check_command(OK, OK, [], console, output=str(out)) == 0
    text = out.read_text()
    assert text.startswith(f"rlbench check {OK}\n  against {OK}\n") and "metric(s) compared" in text  # the tables
    assert console.file.getvalue() == ("ok: no regression (0 improvement(s)) among the machine-independent metrics\n"
                                       f"wrote: {out}\n")
    console = Console(file=io.StringIO(), width=400)
    check_command(OK, OK, [], console, output=str(tmp_path / "check.json"), fmt="json")
    assert console.file.getvalue().startswith(f"rlbench check {OK}\n")  # the document went to the file: tables here
    assert isinstance(json.loads((tmp_path / "check.json").read_text()), dict)


def test_the_tables_header_is_plain_unwrapped_text_on_a_narrow_terminal(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=60)
    check_command(OK, OK, [], console, output=str(tmp_path / "check.json"), fmt="json")
    lines = console.file.getvalue().splitlines()
    # one line each, however narrow the terminal (soft wrap), with no highlighter colour in the figures
    [header] = [line for line in lines if "metric(s) compared" in line]
    assert header.startswith("  2 run(s), 26 metric(s) compared; thresholds: memory 2%") and "memory peaks gated" in header
    hardware = [line for line in lines if "not comparable: hardware differs" in line][0]  # the line, then a table title
    assert "not comparable: hardware differs (the baseline and the new report record no hardware class" in hardware


def test_markdown_has_the_means_over_seeds_of_both_reports() -> None:
    seeds = str(REPORTS / "two_seeds.json")
    console = Console(file=io.StringIO(), width=400)
    check_command(seeds, seeds, [], console, fmt="md")
    text = console.file.getvalue()
    assert text.lstrip().startswith("#") and "mean over seeds: new" in text and "mean over seeds: baseline" in text
    assert not text.lstrip().startswith("{")  # not the JSON document


def test_printed_lines_carry_only_the_colours_their_markup_asks_for(tmp_path: Path) -> None:
    # On a terminal Rich's highlighter would colour numbers (bold cyan, code 36), paths (magenta, 35/95),
    # quoted strings (green) and brackets (bold) in any line printed without highlight=False.
    console = terminal()
    check_command(V2, OK, [], console, allow_mismatch=True)
    text = console.file.getvalue()
    assert f"\x1b[1mrlbench check\x1b[0m {V2}\n  against {OK}\n" in text
    assert ("\x1b[33mnot comparable: hardware differs (the baseline records no hardware class (written before "
            "schema 2))\x1b[0m: times, throughput") in text
    assert "\x1b[2menvironment differs (information):\x1b[0m\n" in text
    assert "\x1b[2m  packages.transformers: '5.23.0' in the baseline, '5.25.0' in the new report\x1b[0m\n" in text
    assert "\x1b[2mnote: grpo_zero/seed0: 8 metric(s) only in the new report, not compared (" in text
    assert text.endswith("\x1b[1;31mFAIL\x1b[0m: 22 regression(s), 0 improvement(s)\n")
    console = terminal()
    out = tmp_path / "check.txt"
    check_command(OK, OK, [], console, output=str(out))
    assert console.file.getvalue().endswith(f"\x1b[0m: no regression (0 improvement(s)) among the machine-independent "
                                            f"metrics\nwrote: {out}\n")
    for code in ("36m", "35m", "95m"):  # no highlighter colour anywhere
        assert code not in text + console.file.getvalue()


def test_the_findings_tables_columns(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=400)
    assert check_command(FAILED, OK, [], console) == 1
    text = console.file.getvalue()
    # a status row: the baseline's status, then the new one (statuses = (baseline, new))
    assert re.search(r"│ grpo_zero/seed0 │ status │ +ok │ failed │ worker exited", text)
    # names left-justified, figures right-justified (the baseline column is as wide as "524.7 MiB")
    assert re.search(r"│ ppo_rules/seed0 │ time/step_s {2,}│  47\.811 s │  68\.011 s │ +\+20\.200 s, \+42\.2% │ - +│ "
                     r"not comparable │", text)
    assert "memory peaks gated: total (RSS or device)\n" in text  # every run gated the same kind


def test_the_output_file_holds_the_tables_laid_out_for_150_columns(tmp_path: Path) -> None:
    out = tmp_path / "check.txt"
    check_command(FAILED, OK, [], Console(file=io.StringIO(), width=400), output=str(out))
    table_lines = [line for line in out.read_text().splitlines() if line[:1] in "┏┃┡│└"]
    # the regressions table's note is longer than 150 columns: the table takes all 150 and the cell folds
    assert max(len(line) for line in table_lines) == 150


def test_the_memory_gate_of_each_run_is_named_when_the_runs_differ(tmp_path: Path) -> None:
    report = json.loads(Path(V2).read_text())
    run = report["runs"][0]
    # the first run as an older rlbench wrote it: no anonymous-memory figures (nor the phases they come from)
    run["metrics"] = {name: value for name, value in run["metrics"].items() if "anon" not in name}
    for role in run["roles"].values():
        for figures in (role.get("phases") or {}).values():
            figures.pop("anon_peak_bytes", None)
    base = tmp_path / "base.json"
    base.write_text(json.dumps(report))
    console = Console(file=io.StringIO(), width=400)
    check_command(V2, str(base), [], console)
    assert "memory peaks gated: grpo_zero/seed0 total, ppo_rules/seed0 anon\n" in console.file.getvalue()
