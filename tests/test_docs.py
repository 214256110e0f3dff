"""The documentation stays true: generated pages current, every command shown parses, every
`validate` shown passes, every relative link resolves, and no page speaks of how it was made.

Commands are the lines of ```sh / ```bash / ```console blocks that start with `rlbench ` (or
`$ rlbench `) and the inline code spans that do; output blocks are ```text and not read. A command
is parsed by rlbench's own parser (nothing runs), then its `--help` must exit 0; a `validate` of
files that exist is run and must pass. All in-process: seconds.
"""

from __future__ import annotations

import argparse
import glob
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rlbench.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md",
                *(ROOT / "docs").rglob("*.md")])
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|console|shell)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`(rlbench [^`]+)`(?!`)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FORBIDDEN = re.compile(r"flock |load average|the issue|issue's|lecture|"
                       r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
"""Words about how the project was made, and commit hashes (a page dates a measurement instead)."""


def _code_text(page: Path) -> str:
    return page.read_text()


def commands() -> list[tuple[str, str]]:
    """(page, command line) for every rlbench command the pages show."""
    found = []
    for page in PAGES:
        text = _code_text(page)
        lines = [line for block in SHELL_BLOCK.findall(text) for line in block.splitlines()]
        lines += INLINE.findall(SHELL_BLOCK.sub("", text))
        for line in lines:
            line = line.strip().removeprefix("$ ")
            if line.startswith("rlbench "):
                found.append((str(page.relative_to(ROOT)), line))
    return found


def _argv(line: str) -> list[str]:
    """The command's arguments: a trailing `# comment`, a pipe, a redirection or `&&` cut off."""
    line = re.split(r"\s#\s|\s\|\s|\s>\s|\s&&\s|\s2>", line)[0]
    return shlex.split(line)[1:]


def test_the_pages_show_commands() -> None:
    shown = {page for page, _ in commands()}
    assert {"README.md", "docs/cli.md", "docs/getting-started.md"} <= shown


SYNOPSIS = re.compile(r"\[|\b[A-Z][A-Z_]+\b")
"""A synopsis (`rlbench run SUITE [--smoke]`) rather than a command to copy: placeholders, options in brackets."""


@pytest.mark.parametrize(("page", "line"), commands(), ids=lambda v: v[:70] if isinstance(v, str) else v)
def test_each_command_shown_parses_and_answers_help(page: str, line: str, capsys: pytest.CaptureFixture) -> None:
    """A command parses as given (nothing runs); a synopsis or a bare command name names only options
    its command has; each answers --help; a `validate` of this repository's files passes."""
    argv = _argv(line.replace("\\|", "|"))
    parser = build_parser()
    if argv[0].startswith("-"):  # rlbench --version, rlbench --help
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        return
    with pytest.raises(SystemExit) as exc:
        main([argv[0], "--help"])
    assert exc.value.code == 0, f"{page}: `{line}`: no command {argv[0]!r}"
    capsys.readouterr()
    if SYNOPSIS.search(line) or len(argv) == 1:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
        known = {opt for action in sub._actions for opt in action.option_strings}
        named = set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", line))
        assert named <= known, f"{page}: `{line}` names options {argv[0]} lacks: {sorted(named - known)}"
        return
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{line}` does not parse (exit {exc.code}): {capsys.readouterr().err.strip()[-300:]}")
    if argv[0] == "validate":
        suites = [path for arg in argv[1:] if arg.endswith((".yaml", ".yml")) for path in sorted(glob.glob(str(ROOT / arg)))]
        assert suites, f"{page}: `{line}` validates no file of this repository"
        rest = [a for a in argv[1:] if not a.endswith((".yaml", ".yml"))]
        assert main(["validate", *suites, *rest, "--quiet"]) == 0, f"{page}: `{line}` does not pass"


def links() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # links in code are not links
        for match in LINK.finditer(text):
            target = match.group(1) or match.group(2)
            if not re.match(r"[a-z]+:|#", target):
                found.append((str(page.relative_to(ROOT)), target))
    return found


def test_every_relative_link_resolves() -> None:
    assert len(links()) > 30
    broken = [f"{page}: {target}" for page, target in links()
              if not ((ROOT / page).parent / target.split("#")[0]).resolve().exists()]
    assert broken == []


def test_generated_pages_are_current() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gendocs.py"), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_environment_variable_rlbench_reads_is_documented() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    from gendocs import ENVIRONMENT

    source = "\n".join(p.read_text() for p in (ROOT / "rlbench").rglob("*.py"))
    read = set(re.findall(r"environ(?:\.get)?[\[(]\"([A-Z_][A-Z0-9_]*)\"", source))
    set_by_rlbench_or_torchrun = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "RLBENCH_PARENT_PID",
                                  "MALLOC_MMAP_THRESHOLD_"}
    documented = {name for name, _, _ in ENVIRONMENT}
    assert read - set_by_rlbench_or_torchrun == documented
    assert "RLBENCH_CACHE" in (ROOT / "README.md").read_text()


def test_no_page_speaks_of_how_it_was_made() -> None:
    pages = [p for p in PAGES if p.name != "CHANGELOG.md"] + sorted((ROOT / "suites").glob("*.yaml"))
    hits = [f"{p.relative_to(ROOT)}:{n}: {m.group(0)!r}" for p in pages
            for n, line in enumerate(p.read_text().splitlines(), 1) for m in FORBIDDEN.finditer(line)]
    assert hits == []


def test_front_page_is_short_and_the_licence_is_there() -> None:
    assert 150 <= len((ROOT / "README.md").read_text().splitlines()) <= 250
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert "MIT" in (ROOT / "pyproject.toml").read_text()
