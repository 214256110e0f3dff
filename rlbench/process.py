"""What the runner and its worker processes share: the event protocol, the worker's command line,
signal handling, the watchdog and how a worker's end becomes a run status.

A worker prints progress as `@rlbench {json}` lines on stdout; the runner reads them. Both turn
SIGTERM into KeyboardInterrupt so that a `kill` ends a run like Ctrl-C, with its results written.

- `worker_command`: the worker (or torchrun and each rank of a distributed run) runs from the
  same rlbench package as the runner, never from a `rlbench/` directory that happens to be in
  the current directory (`python -m` would put the current directory first on sys.path), and
  dies with the process that started it (the runner, or torchrun for a rank), however that ends.
- `survive_broken_pipe`: a closed stdout (`| head`) does not stop the runner before its report is saved.
- `signal_run`, `end_ranks`: torchrun starts each rank in a session of its own, so signals go to
  each rank's group too, and no rank outlives its run.
- `InterruptGate`: in the runner, Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed; not
  under nohup) raise KeyboardInterrupt only where the runner waits (stages, a worker's progress);
  while it collects a stopped worker's result or writes the report, they are only counted, so a
  second Ctrl-C cannot lose a measured run.
- `Watchdog`: a worker past its time limit gets SIGTERM (it writes what it has measured), then
  SIGKILL; its whole process group goes, so nothing it started is left behind.
- `exit_status`: a worker killed by SIGKILL is `oom` only when the kernel's OOM killer ran meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EVENT_PREFIX = "@rlbench "
TERM_GRACE_S = 10.0  # after SIGTERM, seconds a worker gets to write its result before SIGKILL

# A worker is started as `python -c BOOT ROOT SPEC` (and torchrun likewise): -c would put the
# current directory first on sys.path; it is dropped, and the directory holding the runner's own
# rlbench package put first instead.
_CLEAN_PATH = """\
import sys
root = sys.argv.pop(1)
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
if root not in sys.path:
    sys.path.insert(0, root)
"""
# A worker (and torchrun) dies with the process that started it, even by SIGKILL: the kernel sends
# it SIGKILL when its parent ends (PR_SET_PDEATHSIG on Linux; elsewhere a thread that watches the
# parent). A parent gone before this was armed is seen by its pid (PARENT_ENV) and the worker exits.
# Each process names itself the parent of what it starts (torchrun's ranks).
PARENT_ENV = "RLBENCH_PARENT_PID"
_DIE_WITH_PARENT = """\
import os, signal
parent = int(os.environ.get("RLBENCH_PARENT_PID") or 0)
try:
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl")
except (OSError, AttributeError):
    import threading, time
    def _watch_parent(ppid=os.getppid()):
        while os.getppid() == ppid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch_parent, daemon=True).start()
if parent and os.getppid() != parent:
    os._exit(1)
os.environ["RLBENCH_PARENT_PID"] = str(os.getpid())
"""
_WORKER_BOOT = _CLEAN_PATH + _DIE_WITH_PARENT + "from rlbench.worker import main\nsys.exit(main(sys.argv[1:]))\n"
_TORCHRUN_BOOT = (_CLEAN_PATH + _DIE_WITH_PARENT + "signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, "
                  "signal.SIGTERM, signal.SIGHUP))\nfrom torch.distributed.run import main\nmain()\n")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Start a worker inside this block: it inherits the stop signals blocked, and the worker
    unblocks them once its handlers are in place (torchrun at once). A SIGTERM from the watchdog
    or the user while it starts is then held until the worker can write its result, not lost."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def emit(event: dict[str, Any]) -> None:
    """One progress event for the runner, on stdout."""
    print(EVENT_PREFIX + json.dumps(event), flush=True)


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: unwind as KeyboardInterrupt, so the report and results are still written."""
    raise KeyboardInterrupt(f"signal {signum}")


def quiet_libraries() -> None:
    """transformers' own progress bars and advice would break up rlbench's progress display.

    Where transformers is not imported yet this only sets the environment it reads at import (the
    user's own settings win), so a run whose stages are all cached never pays for importing it."""
    if "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def worker_command(spec_path: str | Path, ranks: int = 1) -> list[str]:
    """The command line of one run: a worker for `spec_path` importing this process's rlbench
    package, or for more than one rank, torchrun starting one such worker per rank."""
    import rlbench

    root = str(Path(rlbench.__file__).resolve().parent.parent)
    worker = [sys.executable, "-c", _WORKER_BOOT, root, str(spec_path)]
    if ranks == 1:
        return worker
    return [sys.executable, "-c", _TORCHRUN_BOOT, root, "--standalone", "--nproc_per_node", str(ranks),
            "--no-python", *worker]


class InterruptGate:
    """SIGINT and SIGTERM in the runner: KeyboardInterrupt inside `opened()` blocks, else counted.

        gate = InterruptGate(); gate.install()
        with gate.opened():
            wait_for_the_worker()        # Ctrl-C raises KeyboardInterrupt here
        write_the_report()               # Ctrl-C is only counted: gate.interrupted is then True
        gate.restore()
    """

    def __init__(self) -> None:
        self.count = 0
        self._open = False
        self._previous: dict[int, Any] = {}

    @property
    def interrupted(self) -> bool:
        return self.count > 0

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # started under nohup: a closed terminal is to be ignored
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        if signum == signal.SIGHUP:  # the terminal is gone: what is printed from now on goes nowhere
            _detach_from_terminal()
        if self._open:
            self._open = False  # one KeyboardInterrupt; later signals while it unwinds are only counted
            raise KeyboardInterrupt(f"signal {signum}")

    @contextmanager
    def opened(self) -> Iterator[None]:
        if self.count:
            raise KeyboardInterrupt("interrupted earlier")
        self._open = True
        try:
            yield
        finally:
            self._open = False


def _detach_from_terminal() -> None:
    """Point stdout and stderr at /dev/null where they are a terminal (writes to a hung-up one fail)."""
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
        except OSError:
            continue


def survive_broken_pipe(console: Any) -> None:
    """Rich ends the process on a broken stdout pipe (`rlbench run ... | head -1`: SystemExit(1)
    from inside a print), which would skip saving the report. For this console a broken pipe instead
    sends its output to /dev/null and says so once on stderr; the run goes on."""
    said = []

    def on_broken_pipe() -> None:
        console.quiet = True
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        finally:
            os.close(null)
        if not said:
            said.append(True)
            try:
                sys.stderr.write("rlbench: stdout was closed (broken pipe); the run goes on and its report is "
                                 "saved as usual\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    console.on_broken_pipe = on_broken_pipe


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the worker's process group (the worker and everything it started)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exited(proc: subprocess.Popen) -> bool:
    """Whether the worker has exited, without reaping it: until it is reaped its process group id
    stays reserved, so signalling the group cannot reach an unrelated process."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def finish_group(proc: subprocess.Popen, timeout: float | None = None) -> int:
    """Wait (up to `timeout` seconds, None: as long as it takes) for the worker to exit, SIGKILL
    whatever is left of its process group (itself after a timeout, or anything it started and left
    running), then reap it; returns its exit code."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not exited(proc) and (deadline is None or time.monotonic() < deadline):
        time.sleep(0.05)
    signal_group(proc, signal.SIGKILL)
    return proc.wait()


def signal_run(proc: subprocess.Popen, sig: int, run_dir: Path) -> None:
    """The worker's process group and, for a distributed run, every rank: torchrun starts each rank
    in a session of its own, which a signal to torchrun's group does not reach."""
    signal_group(proc, sig)
    for pid in _rank_pids(run_dir, str(run_dir / "spec.json")):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _rank_pids(run_dir: Path, spec_path: str) -> list[int]:
    """Live ranks of the run (each wrote rank*/pid), checked by command line against reused pids."""
    import psutil

    pids = []
    for path in sorted(run_dir.glob("rank*/pid")):
        try:
            pid = int(path.read_text())
            if spec_path in psutil.Process(pid).cmdline():
                pids.append(pid)
        except (OSError, ValueError, psutil.Error):
            continue
    return pids


def end_ranks(run_dir: Path, spec_path: Path) -> None:
    """SIGKILL any rank still alive once its torchrun is gone: no process outlives its run."""
    for pid in _rank_pids(run_dir, str(spec_path)):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---- the watchdog -------------------------------------------------------------------------------

STARTUP_S = 600.0  # loading every role, before RL; also covers the final evaluation's set-up
FIRST_STEP_S = 3600.0  # before the first step reports, nothing is known of the run's speed
SLACK = 3.0  # a run may take this many times its projected time


def time_limit(run_timeout_s: float | None, wall_seconds: float | None, eval_seconds: float,
               rl_seconds: float, fraction: float) -> float:
    """Seconds a worker may run, counted from its start.

    `run_timeout_s` when the suite sets it. Otherwise derived from the budget: loading (STARTUP_S),
    SLACK x the starting evaluation's time for the final evaluation, and SLACK x the RL time, which
    is the budget's `wall_seconds` or, for the other budgets, projected from the worker's progress
    (`rl_seconds` after loading for `fraction` of the budget: rl_seconds / fraction in all). Before
    the first step reports, FIRST_STEP_S stands in for the projection."""
    if run_timeout_s:
        return run_timeout_s
    projected = rl_seconds / fraction if fraction > 0 else 0.0
    rl = SLACK * max(projected, wall_seconds or 0.0)
    if fraction <= 0:
        rl = max(rl, FIRST_STEP_S)
    return STARTUP_S + SLACK * eval_seconds + rl


class Watchdog:
    """Stops a worker that runs past `limit()` seconds (re-read every `period`, so it follows the
    worker's progress): SIGTERM through `send` (default: to its process group), then SIGKILL after
    `grace` seconds.
    `expired` is the limit it ran past (None: it did not)."""

    def __init__(self, proc: subprocess.Popen, limit: Callable[[], float], period: float = 1.0,
                 grace: float = TERM_GRACE_S, send: Callable[[int], None] | None = None) -> None:
        self.proc, self.limit, self.period, self.grace = proc, limit, period, grace
        self.send = send or (lambda sig: signal_group(proc, sig))  # a distributed run: its ranks too
        self.started = time.monotonic()
        self.expired: float | None = None  # the limit it ran past
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rlbench-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(self.period):
            limit = self.limit()
            if time.monotonic() - self.started > limit and not exited(self.proc):
                self.expired = limit
                self.send(signal.SIGTERM)
                if not self._done.wait(self.grace) and not exited(self.proc):
                    self.send(signal.SIGKILL)
                return


# ---- how a worker ended -----------------------------------------------------------------------


def oom_kill_counts() -> tuple[int, ...]:
    """The kernel's OOM-kill counters that this process can read (system-wide and this cgroup's,
    v1 or v2); a worker killed by SIGKILL while one of them rose was killed for memory."""
    counts = []
    for path in ("/proc/vmstat", "/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            text = Path(path).read_text()
        except OSError:
            counts.append(0)
            continue
        value = next((line.split()[1] for line in text.splitlines() if line.startswith("oom_kill ")), "0")
        counts.append(int(value) if value.isdigit() else 0)
    return tuple(counts)


def oom_killer_ran(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Whether an OOM-kill counter rose between two `oom_kill_counts()` readings."""
    return any(a > b for a, b in zip(after, before))


def exit_status(code: int | None, oom_before: tuple[int, ...], oom_after: tuple[int, ...]) -> tuple[str, str]:
    """(status, what happened) for a worker that ended without a result of its own."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        if code == -signal.SIGKILL and oom_killer_ran(oom_before, oom_after):
            return "oom", f"worker killed by {name}: the kernel's OOM killer ran meanwhile"
        if code in (-signal.SIGINT, -signal.SIGTERM):
            return "interrupted", f"worker stopped by {name}"
        return "failed", f"worker killed by signal {-code} ({name})"
    if code == 130:
        return "interrupted", "worker exited with code 130"
    return "failed", f"worker exited with code {code}"
