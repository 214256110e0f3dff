"""Where a suite's report goes: a new folder for each run of a suite, or an earlier one to resume.

    out_dir = new_results_dir(Path("results"), "quickstart", "output")   # results/quickstart/<UTC stamp>
    out_dir, report, suite = reopen_results_dir("results/quickstart/20261124T032253Z")   # --resume

A new folder is `<output>/<suite name>/<UTC stamp>`: the stamp is in seconds, with `-2`, `-3`, ...
for suites started in the same second, and created with mkdir (never reused). The suite name is
a checked path component (config.checks.path_component_problem), and `<output>/<name>` is opened
without following a symbolic link, so a report is never written outside the output root.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlbench.config import Suite, load_suite
from rlbench.errors import UserError


def new_results_dir(root: Path, name: str, field: str) -> Path:
    """A new, empty `<root>/<name>/<UTC stamp>` directory (see above); `field` names the setting
    that gave `root` (output or --output) in errors."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{field} {root}: not a directory") from None
    except OSError as err:
        raise UserError(f"{field} {root}: cannot create or open it ({err.strerror})") from None
    try:
        try:
            os.mkdir(name, dir_fd=root_fd)
        except FileExistsError:
            pass
        try:
            suite_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
        except OSError as err:
            raise UserError(f"{field} {root}: {name} in it is not a directory (a symbolic link or a file: "
                            f"{err.strerror}); reports are written only into real directories") from None
        try:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            for n in range(1, 10_000):
                candidate = stamp if n == 1 else f"{stamp}-{n}"
                try:
                    os.mkdir(candidate, dir_fd=suite_fd)
                except FileExistsError:
                    continue
                return root / name / candidate
            raise UserError(f"{field} {root / name}: 10,000 reports already started this second")
        finally:
            os.close(suite_fd)
    except OSError as err:
        raise UserError(f"{field} {root}: cannot create a report folder in it ({err.strerror})") from None
    finally:
        os.close(root_fd)


def reopen_results_dir(where: str) -> tuple[Path, dict[str, Any], Suite]:
    """(results directory, its report, its suite.resolved.yaml) for `--resume`. The report is read
    like any other (load_report: an unreadable, non-UTF-8 or too deeply nested one is one line and
    exit 2) and must be of the schema this rlbench writes: resuming an older report would mix two
    schemas in one file."""
    from rlbench.report.schema import SCHEMA_VERSION, load_report

    out_dir = Path(where)
    if out_dir.is_file():
        out_dir = out_dir.parent
    if not (out_dir / "report.json").is_file():
        raise UserError(f"--resume {where}: no report.json there; give a results directory such as "
                        "results/<suite>/<timestamp>")
    report = load_report(out_dir / "report.json")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"--resume {where}: the report was written by an older rlbench (schema "
                        f"{report.get('schema_version')}, this one writes {SCHEMA_VERSION}); run the suite afresh")
    suite_file = out_dir / "suite.resolved.yaml"
    if not suite_file.is_file():
        raise UserError(f"--resume {where}: no suite.resolved.yaml beside the report")
    return out_dir, report, load_suite(suite_file)
