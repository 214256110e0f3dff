"""Where a suite's report goes: a new folder for each run of a suite, or an earlier one to resume.

    out_dir = new_results_dir(Path("results"), "quickstart", "output")   # results/quickstart/<UTC stamp>
    with report_lock(out_dir, "--resume ..."):                                           # one runner per folder
        out_dir, report, suite = reopen_results_dir("results/quickstart/20261124T032253Z")   # --resume

A new folder is `<output>/<suite name>/<UTC stamp>`: the stamp is in seconds, with `-2`, `-3`, ...
for suites started in the same second, and created with mkdir (never reused). The suite name is
a checked path component (config.checks.path_component_problem), and `<output>/<name>` is opened
without following a symbolic link, so a report is never written outside the output root.

A runner holds `report_lock` on its folder for as long as it writes there (an advisory lock on
`.rlbench.lock`, released by the kernel when the runner dies, however it dies): a second runner,
a resume while the first is alive or two resumes at once, is refused with one line. A resume runs
the suite the report recorded: a `suite.resolved.yaml` that differs from the report's `suite`
(edited, or another suite's file put there) is refused, naming the fields that differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlbench.config import Suite, load_suite, resolved_dict
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


LOCK_NAME = ".rlbench.lock"


@contextmanager
def report_lock(out_dir: Path, what: str) -> Iterator[None]:
    """Hold the folder's lock for the block, or raise UserError at once when another runner holds
    it (`what` starts the message: --resume DIR, or the folder)."""
    import fcntl

    try:
        fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise UserError(f"{what}: cannot open {out_dir / LOCK_NAME} ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{what}: another rlbench (pid {holder}) is running this report now; let it finish, "
                            "or stop it (Ctrl-C) and resume then") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def results_dir_of(where: str) -> Path:
    """The results directory `--resume WHERE` names (WHERE may be its report.json)."""
    out_dir = Path(where)
    if out_dir.is_file():
        out_dir = out_dir.parent
    if not (out_dir / "report.json").is_file():
        raise UserError(f"--resume {where}: no report.json there; give a results directory such as "
                        "results/<suite>/<timestamp>")
    return out_dir


def reopen_results_dir(where: str) -> tuple[Path, dict[str, Any], Suite]:
    """(results directory, its report, its suite.resolved.yaml) for `--resume`. The report is read
    like any other (load_report: an unreadable, non-UTF-8 or too deeply nested one is one line and
    exit 2) and must be of the schema this rlbench writes: resuming an older report would mix two
    schemas in one file."""
    from rlbench.report.schema import SCHEMA_VERSION, load_report

    out_dir = results_dir_of(where)
    report = load_report(out_dir / "report.json")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"--resume {where}: the report was written by an older rlbench (schema "
                        f"{report.get('schema_version')}, this one writes {SCHEMA_VERSION}); run the suite afresh")
    suite_file = out_dir / "suite.resolved.yaml"
    if not suite_file.is_file():
        raise UserError(f"--resume {where}: no suite.resolved.yaml beside the report")
    try:
        suite = load_suite(suite_file)
    except UserError as err:
        raise UserError(*(f"--resume {where}: suite.resolved.yaml: {m}" for m in err.messages)) from None
    differ = _differences(_plain(report.get("suite")), _plain(resolved_dict(suite)))
    if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise UserError(f"--resume {where}: suite.resolved.yaml is not the suite this report ran ({shown} "
                        "differ): it was edited or replaced; a resume runs the recorded suite only, so put the "
                        "file back, or run the suite afresh")
    return out_dir, report, suite


def _plain(value: Any) -> Any:
    """As JSON holds it (tuples as lists), so a suite read from YAML compares with one read from JSON."""
    return json.loads(json.dumps(value, default=str))


def _differences(recorded: Any, now: Any, path: str = "") -> list[str]:
    """Dotted paths of the fields where two plain suites differ; a field the recorded suite lacks
    (added to rlbench since, with its default) is not a difference."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        return [d for key in sorted(recorded, key=str)
                for d in _differences(recorded.get(key), now.get(key), f"{path}.{key}" if path else str(key))]
    if isinstance(recorded, list) and isinstance(now, list) and len(recorded) == len(now):
        return [d for i, (a, b) in enumerate(zip(recorded, now)) for d in _differences(a, b, f"{path}[{i}]")]
    return [] if recorded == now else [path or "the whole suite"]
