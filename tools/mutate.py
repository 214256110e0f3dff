"""Mutation check: plant one small bug at a time in the code rlbench's numbers depend on, run the tests
that cover that module, and list every bug the tests did not notice.

    make mutate                                            # every module below
    .venv/bin/python tools/mutate.py rlbench/report/stats.py  # one module (several may be named)
    .venv/bin/python tools/mutate.py --list                # the mutants, nothing run
    .venv/bin/python tools/mutate.py --json mutate.json    # also one JSON document for machines

A mutant is a single edit of the source: an arithmetic operator swapped (+ -, * /, // /, ** *, % //,
| &), a term or a coefficient dropped (a + b -> a, c * x -> x), a comparison moved across its
boundary or negated (< <=, > >=, == !=, in / not in, is / is not), and/or swapped, a sign or a `not`
dropped, min/max swapped, True/False swapped, an index -1/0 swapped (last <-> first), a number
changed (an integer n -> n + 1, a float x -> x / 2, 0.0 -> 1.0). Not mutated: strings, `assert`
statements (internal invariants), annotations, and the numbers inside module-level data tables
(dict/list/tuple literals such as GPU datasheet figures), which are data, not math. Besides these,
NAMED lists bugs that once got past the tests; they are always tried.

Each mutant is written into the file, the module's covering test files (MODULES: the fastest that
cover it, in order) run in a forked child with `-x -p no:cacheprovider` and a timeout, and the file
is put back byte for byte (and its timestamp, so nothing recompiles for nothing). The child is
forked from a process that has already imported torch, transformers and pytest, so a mutant costs
its tests, not ten seconds of imports. A failing test (or a timeout) kills the mutant; tests that
all pass let it survive. A survivor that cannot change behaviour is listed in EQUIVALENT with the
reason, and does not count against the kill rate.

The source is always restored: on normal exit, on an exception, on Ctrl-C, SIGTERM or SIGHUP; a
copy of the original is kept outside the tree while a mutant is in place, and a run that was killed
outright (SIGKILL, power loss) leaves it there for the next run, which restores it first. The run is
deterministic: mutants in file order, a fixed hash seed, tests in file order. Exit code 0 when the
kill rate of every module is at least --fail-under percent (default 95) and every named mutant was
killed, else 1. Not part of `make test`: it takes minutes (numbers in the README).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mutants import Mutant, generate, named_mutant  # noqa: E402
from mutation_targets import EQUIVALENT, MODULES, NAMED, NAMED_ONLY  # noqa: E402


def mutants_of(path: str, generated: bool) -> tuple[list[Mutant], list[str]]:
    """The generated (when `generated`) and named mutants of one file, and the named ones that cannot be planted."""
    text = (ROOT / path).read_text()
    mutants = generate(path, text) if generated else []
    problems = []
    for named in NAMED:
        if named.path != path:
            continue
        planted = named_mutant(named, text)
        if isinstance(planted, str):
            problems.append(f"{named.name}: {planted}")
            continue
        twin = next((m for m in mutants if (m.start, m.end, m.new) == (planted.start, planted.end, planted.new)), None)
        if twin:
            twin.name = named.name
        else:
            mutants.append(planted)
    for mutant in mutants:
        line_text = text.splitlines()[mutant.line - 1]
        for (where, function, snippet, edit), why in EQUIVALENT.items():
            if (where, function, edit) == (path, mutant.function, mutant.edit) and snippet in line_text:
                mutant.equivalent = why
    return mutants, problems

# ---- running them ------------------------------------------------------------------------------

BACKUP_DIR = Path(tempfile.gettempdir()) / f"rlbench-mutate-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
LOCK_FILE = BACKUP_DIR.with_suffix(".lock")


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwind as Ctrl-C does, so the source is restored."""


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def restore_leftovers() -> None:
    """Put back any file a killed run left mutated (its original waits in BACKUP_DIR)."""
    manifest = BACKUP_DIR / "manifest.json"
    if not manifest.exists():
        return
    for entry in json.loads(manifest.read_text()):
        original = (BACKUP_DIR / entry["backup"]).read_bytes()
        _write(ROOT / entry["path"], original, entry["mtime_ns"])
        print(f"restored {entry['path']} left mutated by an interrupted run", file=sys.stderr)
    _clear_backup()


def _clear_backup() -> None:
    for child in BACKUP_DIR.glob("*"):
        child.unlink()
    if BACKUP_DIR.exists():
        BACKUP_DIR.rmdir()


def _write(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    """Atomically: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.mutate-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


class Planted:
    """A mutant in place for the duration of a `with` block; the original comes back whatever happens."""

    def __init__(self, mutant: Mutant) -> None:
        self.mutant, self.path = mutant, ROOT / mutant.path

    def __enter__(self) -> Planted:
        self.original = self.path.read_bytes()
        self.mtime_ns = self.path.stat().st_mtime_ns
        BACKUP_DIR.mkdir(exist_ok=True)
        (BACKUP_DIR / "original").write_bytes(self.original)
        (BACKUP_DIR / "manifest.json").write_text(json.dumps(
            [{"path": self.mutant.path, "backup": "original", "mtime_ns": self.mtime_ns}]))
        text = self.original.decode()
        mutated = text[:self.mutant.start] + self.mutant.new + text[self.mutant.end:]
        # A new timestamp, never the original's: Python must not take the original's cached bytecode.
        stamp = max(time.time_ns(), self.mtime_ns + 2_000_000_000)
        _write(self.path, mutated.encode(), stamp)
        return self

    def __exit__(self, *exc) -> None:
        _write(self.path, self.original, self.mtime_ns)
        _clear_backup()


def _tracer(module: Path, out: Path):
    """A pytest plugin recording, for each function of `module`, the tests that call it (each test from
    its setup on). Only 'call' events are seen (no line tracing), so the clean run stays fast."""
    filename, calls, current = str(module), {}, [""]

    def trace(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == filename:
            tests = calls.setdefault(frame.f_code.co_name, [])
            if not tests or tests[-1] != current[0]:
                tests.append(current[0])

    class Tracer:
        def pytest_runtest_logstart(self, nodeid, location):
            current[0] = nodeid
            sys.settrace(trace)

        def pytest_sessionfinish(self, session):
            sys.settrace(None)
            out.write_text(json.dumps({name: list(dict.fromkeys(tests)) for name, tests in calls.items()}))
            # what the tests imported (lazily too: assert_close's first call imports sympy, 7 s), for _warm_up
            skip = ("rlbench", "tests", "conftest", "test_", "transformers_modules", "__main__")
            out.with_suffix(".modules").write_text("\n".join(n for n in list(sys.modules) if not n.startswith(skip)))

    return Tracer()


def _run_tests(tests: list[str], timeout: float, log: Path, trace: tuple[Path, Path] | None = None,
               ) -> tuple[str, float, str]:
    """Run the tests in a forked child: ("killed" | "survived" | "timeout" | "error", seconds, first failure).
    `trace` (module, output file): also record which tests call each function of the module."""
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: its own process group, so a timeout kills whatever the tests started
        code = 3
        try:
            os.close(read_fd)
            os.setpgid(0, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            sys.dont_write_bytecode = True
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            import pytest

            class FirstFailure:
                def pytest_runtest_logreport(self, report):
                    if report.failed:
                        os.write(write_fd, report.nodeid.encode() + b"\n")

            plugins = [FirstFailure(), *([_tracer(*trace)] if trace else [])]
            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests],
                                   plugins=plugins))
        finally:
            os._exit(code)
    os.close(write_fd)
    failed = b""
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            ready, _, _ = select.select([read_fd], [], [], 0.05)
            if ready:
                failed += os.read(read_fd, 4096)
            if done:
                break
            if time.monotonic() - start > timeout:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout", time.monotonic() - start, ""
        code = os.waitstatus_to_exitcode(status)
    except BaseException:
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        raise
    finally:
        os.close(read_fd)
    seconds = time.monotonic() - start
    first = failed.decode().splitlines()[0] if failed else ""
    # pytest: 0 all passed, 1 some failed, 2 interrupted (a collection error: the mutant broke an import)
    return {0: "survived", 1: "killed", 2: "killed"}.get(code, "error"), seconds, first


def _warm_up(listing: Path) -> None:
    """Import in this process what a clean run of the tests imported (rlbench and the tests excepted), so
    each forked child starts with torch, transformers and their lazily loaded parts in memory."""
    import importlib

    for name in listing.read_text().splitlines() if listing.exists() else []:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - a module that only imports in its own context is simply not warmed
                pass


def _fmt_rate(killed: int, counted: int) -> str:
    return f"{100.0 * killed / counted:5.1f}%" if counted else "  n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module paths (default: every module in MODULES)")
    parser.add_argument("--list", action="store_true", help="list the mutants and run nothing")
    parser.add_argument("--json", help="also write the results as one JSON document to this path")
    parser.add_argument("--fail-under", type=float, default=95.0, help="least kill rate of every module, percent")
    parser.add_argument("--timeout-factor", type=float, default=3.0,
                        help="a mutant's tests may take this many times the clean run, plus 30 s")
    args = parser.parse_args(argv)

    if os.environ.get("PYTHONHASHSEED") != "0":  # a fixed hash seed: the same order of sets every run
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    targets = {**NAMED_ONLY, **MODULES}
    chosen = args.modules or list(targets)
    unknown = [m for m in chosen if m not in targets]
    if unknown:
        print(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(targets)}", file=sys.stderr)
        return 2
    plan: dict[str, list[Mutant]] = {}
    problems: list[str] = []
    for path in chosen:
        plan[path], issues = mutants_of(path, generated=path in MODULES)
        problems += [f"{path}: {issue}" for issue in issues]
    if args.list:
        for mutants in plan.values():
            for m in mutants:
                tag = f" [{m.name}]" if m.name else (" [equivalent]" if m.equivalent else "")
                print(f"{m.path}:{m.line} ({m.function}) {m.edit}{tag}")
        print(f"{sum(len(v) for v in plan.values())} mutants", *problems, sep="\n")
        return 0

    lock = open(LOCK_FILE, "w")  # noqa: SIM115 - held, with its lock, until this process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another mutation run holds {LOCK_FILE}: one run per tree at a time", file=sys.stderr)
        return 2
    restore_leftovers()  # only with the lock held: a running mutation's file is not a leftover
    logs = Path(tempfile.mkdtemp(prefix="rlbench-mutate-logs-"))
    results: dict[str, dict] = {}
    started = time.monotonic()
    try:
        for path in chosen:
            tests = targets[path]
            calls_file = logs / "calls.json"
            status, clean_seconds, failure = _run_tests(tests, 900, logs / "clean.log", (ROOT / path, calls_file))
            if status != "survived":
                print(f"{path}: its tests fail without a mutant ({failure or status}); see {logs / 'clean.log'}")
                results[path] = {"error": f"tests fail without a mutant: {failure or status}"}
                continue
            calls = json.loads(calls_file.read_text()) if calls_file.exists() else {}
            _warm_up(calls_file.with_suffix(".modules"))
            timeout = args.timeout_factor * clean_seconds + 30
            mutants = plan[path]
            print(f"{path}: {len(mutants)} mutants, tests {' '.join(tests)} ({clean_seconds:.1f} s clean)", flush=True)
            for i, mutant in enumerate(mutants):
                # First the tests that call the mutated function (all of them for module-level code); a
                # mutant they all pass is tried against every covering test before it counts as a survivor.
                callers = calls.get(mutant.function) if mutant.function != "<module>" else None
                with Planted(mutant):
                    if callers is not None:
                        mutant.status, mutant.seconds, mutant.failed_test = _run_tests(callers, timeout,
                                                                                       logs / "mutant.log")
                    if callers is None or mutant.status == "survived":
                        mutant.status, seconds, mutant.failed_test = _run_tests(tests, timeout, logs / "mutant.log")
                        mutant.seconds += seconds
                if mutant.status == "survived" and mutant.equivalent:
                    mutant.status = "equivalent"
                if mutant.status in ("survived", "error") or mutant.name:
                    tag = f" [{mutant.name}]" if mutant.name else ""
                    print(f"  {i + 1}/{len(mutants)} {mutant.status:9s} {mutant.path}:{mutant.line} "
                          f"({mutant.function}) {mutant.edit}{tag}", flush=True)
            results[path] = {"mutants": [asdict(m) for m in mutants], "clean_seconds": clean_seconds}
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({type(exc).__name__} {exc}); the source is restored; the mutants tried so far:",
              flush=True)
        tried = {path: [m for m in mutants if m.status != "pending"] for path, mutants in plan.items()}
        _report({path: ms for path, ms in tried.items() if ms}, results, problems, time.monotonic() - started, args)
        return 130
    code = _report(plan, results, problems, time.monotonic() - started, args)
    if code == 0:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        print(f"the last clean and mutant test logs: {logs}")
    return code


def _report(plan: dict[str, list[Mutant]], results: dict[str, dict], problems: list[str], seconds: float,
            args: argparse.Namespace) -> int:
    ok = True
    print(f"\n{'module':40s} {'mutants':>7s} {'killed':>6s} {'timeout':>7s} {'equiv':>5s} {'survived':>8s} "
          f"{'rate':>6s}")
    summary = {}
    for path, mutants in plan.items():
        if "error" in results.get(path, {}):
            print(f"{path:40s} error: {results[path]['error']}")
            ok = False
            continue
        counts = {s: sum(m.status == s for m in mutants) for s in ("killed", "timeout", "equivalent", "survived",
                                                                   "error")}
        counted = len(mutants) - counts["equivalent"]
        killed = counts["killed"] + counts["timeout"]
        rate = 100.0 * killed / counted if counted else 100.0
        gated = path in MODULES
        ok &= not gated or rate >= args.fail_under
        ok &= all(m.status in ("killed", "timeout") for m in mutants if m.name)
        ok &= counts["error"] == 0
        summary[path] = dict(counts, mutants=len(mutants), kill_rate=round(rate, 1))
        print(f"{path:40s} {len(mutants):7d} {counts['killed']:6d} {counts['timeout']:7d} {counts['equivalent']:5d} "
              f"{counts['survived'] + counts['error']:8d} {_fmt_rate(killed, counted)}")
    survivors = [m for ms in plan.values() for m in ms if m.status in ("survived", "error")]
    print("\nsurvivors:" if survivors else "\nsurvivors: none")
    for m in survivors:
        print(f"  {m.path}:{m.line} ({m.function}) {m.edit}" + (f" [{m.name}]" if m.name else "")
              + (" (error)" if m.status == "error" else ""))
    named = [m for ms in plan.values() for m in ms if m.name]
    print("\nnamed mutants:")
    for m in named:
        print(f"  {m.name:30s} {m.status:9s} {m.path}:{m.line}")
    for problem in problems:
        print(f"  {problem}")
    equivalent = [m for ms in plan.values() for m in ms if m.status == "equivalent"]
    if equivalent:
        print("\nequivalent (cannot change behaviour; not counted):")
        for m in equivalent:
            print(f"  {m.path}:{m.line} {m.edit}: {m.equivalent}")
    problems_block = [p for p in problems if "retired" not in p]
    ok &= not problems_block
    print(f"\n{sum(len(v) for v in plan.values())} mutants in {seconds / 60:.1f} min; "
          + ("ok" if ok else f"FAILED (kill rate under {args.fail_under:g}%, a named mutant survived, or an error)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"modules": summary, "results": results, "problems": problems,
                                               "seconds": round(seconds, 1), "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
