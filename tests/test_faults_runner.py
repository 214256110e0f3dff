"""The runner under faults (issue 17): workers, signals, the watchdog, output folders, resume.

- 5: a worker never imports a `rlbench/` planted in the current directory;
- 7: two suites started in the same second get their own folders; a symlink is not followed;
- 10: SIGKILL is `oom` only when the kernel's OOM killer ran; the CPU allocator's error is `oom`;
- 11: an --output that is a file, /dev/full, read-only or full: exit 2 and one line;
- 13 and --resume: a second Ctrl-C keeps the interrupted run's partial result; --resume keeps the
  ok run and runs the other again;
- 15: a hung worker ends as `timeout` (run_timeout_s, or a limit derived from the budget), and
  nothing it started is left running.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from rlbench.cli import main
from rlbench.config import load_suite, resolved_dict
from rlbench.errors import UserError
from rlbench.process import (
    FIRST_STEP_S,
    STARTUP_S,
    Watchdog,
    exit_status,
    finish_group,
    time_limit,
    worker_command,
)
from rlbench.results import new_results_dir
from rlbench.runner import execute_run, plan_runs, run_suite

TINY = Path(__file__).parent / "data" / "tiny.yaml"


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def resolved_suite_file(tmp_path: Path, overrides: list[str] = ()) -> tuple[object, Path]:
    suite = load_suite(TINY, list(overrides))
    path = tmp_path / "suite.resolved.yaml"
    path.write_text(yaml.safe_dump(resolved_dict(suite), sort_keys=False))
    return suite, path


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# ---- 5: the worker's own package ----------------------------------------------------------------


def test_a_worker_never_imports_rlbench_from_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    planted = tmp_path / "cwd" / "rlbench"
    planted.mkdir(parents=True)
    marker = tmp_path / "planted-ran"
    (planted / "__init__.py").write_text("")
    (planted / "worker.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    monkeypatch.chdir(planted.parent)
    suite, _ = resolved_suite_file(tmp_path)
    [entry] = plan_runs(suite)
    # the suite file does not exist: the real worker fails at once, with a result that says so
    result = execute_run(suite, tmp_path / "missing.yaml", entry, {"policy_dir": str(tmp_path)}, tmp_path / "out",
                         quiet())
    assert not marker.exists()
    assert result["status"] == "failed" and "missing.yaml: no such file" in result["error"]


def test_torchrun_and_its_ranks_are_started_the_same_way(tmp_path: Path) -> None:
    """A distributed run: torchrun itself and each rank (--no-python: the rank command is given
    whole) start through the same boot, never `python -m`, which would put the cwd first."""
    command = worker_command(tmp_path / "spec.json", ranks=2)
    assert "-m" not in command and command.count("-c") == 2
    rank = command[command.index("--no-python") + 1:]
    assert rank == worker_command(tmp_path / "spec.json")
    assert command[command.index("--nproc_per_node") + 1] == "2"


# ---- 15: the watchdog ---------------------------------------------------------------------------


def test_a_hung_worker_ends_as_timeout_with_its_result(tmp_path: Path) -> None:
    # The 2 s limit cannot race the worker's start, however slow a loaded machine makes it: the worker
    # starts with SIGTERM blocked (process.stop_signals_blocked) and unblocks it once its handler is in
    # place, so a SIGTERM that came earlier waits for it (and TERM_GRACE_S, 10 s, for it to write).
    # Before that, a start slower than 2 s died by SIGTERM with no result.
    suite, _ = resolved_suite_file(tmp_path, ["run_timeout_s=2"])
    fifo = tmp_path / "suite-that-never-comes.yaml"
    os.mkfifo(fifo)  # the worker blocks opening it: a real hang, in a system call
    [entry] = plan_runs(suite)
    stale = tmp_path / "out" / "runs" / "grpo_zero-seed0" / "error.log"
    stale.parent.mkdir(parents=True)
    stale.write_text("Traceback of an earlier attempt")  # a --resume reruns the run in the same folder
    result = execute_run(suite, fifo, entry, {"policy_dir": str(tmp_path)}, tmp_path / "out", quiet())
    # That the watchdog, at its 2 s, ended it (not a wall-clock bound, which a busy machine stretches):
    assert result["status"] == "timeout"
    assert result["error"].startswith("stopped by the watchdog after 2 s")
    assert "finished" in result  # the worker wrote what it had when SIGTERM came
    assert not stale.exists()  # no earlier attempt's error beside this result


def test_the_watchdog_kills_the_whole_group_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    child = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)")
    parent = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); print(p.pid, flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, start_new_session=True)
    grandchild = int(proc.stdout.readline())
    with Watchdog(proc, lambda: 0.5, period=0.1, grace=0.5) as watchdog:
        proc.stdout.read()  # returns once the group is gone
    code = finish_group(proc)
    assert watchdog.expired == 0.5 and code == -signal.SIGKILL
    deadline = time.monotonic() + 60  # a wait, not a bound: it ends as soon as the kernel has reaped it
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)


def test_the_time_limit_follows_the_budget_and_the_progress() -> None:
    # run_timeout_s wins
    assert time_limit(30, 100, 10, 5, 0.5) == 30
    # wall budget of 100 s, starting evaluation 10 s: loading + 3 x eval + 3 x wall
    assert time_limit(None, 100, 10, 0, 0) == STARTUP_S + 30 + max(300, FIRST_STEP_S)
    assert time_limit(None, 100, 10, 50, 0.5) == STARTUP_S + 30 + 300
    # steps budget: a quarter done in 20 s projects 80 s of RL, so 240 s are allowed for it
    assert time_limit(None, None, 10, 20, 0.25) == STARTUP_S + 30 + 240
    # before the first step reports, FIRST_STEP_S stands in; a hang is still caught
    assert time_limit(None, None, 0, 0, 0) == STARTUP_S + FIRST_STEP_S


# ---- 10: how a worker ended -----------------------------------------------------------------------


def test_sigkill_is_oom_only_when_the_oom_killer_ran() -> None:
    proc = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert proc.returncode == -signal.SIGKILL
    assert exit_status(proc.returncode, (3, 0, 0), (3, 0, 0)) == ("failed", "worker killed by signal 9 (SIGKILL)")
    status, how = exit_status(proc.returncode, (3, 0, 0), (4, 0, 0))
    assert status == "oom" and "OOM killer" in how
    assert exit_status(-signal.SIGSEGV, (0,), (1,))[0] == "failed"  # only SIGKILL comes from the OOM killer


def test_the_cpu_allocators_out_of_memory_error_is_oom() -> None:
    import torch

    from rlbench.worker import _status_of

    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**62, dtype=torch.uint8)  # 4 EiB: the allocator refuses it at once
    assert "can't allocate memory" in str(caught.value)
    assert _status_of(caught.value) == "oom"
    assert _status_of(MemoryError()) == "oom"
    assert _status_of(ValueError("bad value")) == "failed"


# ---- 7: output folders ----------------------------------------------------------------------------


def test_suites_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    folders = [new_results_dir(tmp_path, "tiny", "output") for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() and f.parent == tmp_path / "tiny" for f in folders)
    assert folders[1].name == folders[0].name + "-2" or folders[1].name > folders[0].name


def test_a_symlinked_suite_folder_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tiny").symlink_to(elsewhere)
    with pytest.raises(UserError, match="tiny in it is not a directory"):
        new_results_dir(tmp_path / "results", "tiny", "output")
    assert list(elsewhere.iterdir()) == []


# ---- 11: outputs that cannot be written -----------------------------------------------------------


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("target", ["file", "/dev/full"])
def test_an_output_that_is_not_a_directory_is_exit_2(tmp_path: Path, capsys, target: str) -> None:
    if target == "file":
        target = str(tmp_path / "a-file")
        Path(target).write_text("")
    code, lines = run_cli(["run", str(TINY), "--output", target], capsys)
    assert code == 2 and lines == [f"error: --output {target}: not a directory"]


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("case", ["read-only", "full"])
def test_a_read_only_or_full_disk_is_exit_2(tmp_path: Path, capsys, case: str) -> None:
    mount = tmp_path / "mnt"
    if not _mount_tmpfs(mount, "ro,size=64k" if case == "read-only" else "size=8k"):
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        if case == "full":
            with open(mount / "filler", "wb", buffering=0) as fh, pytest.raises(OSError):
                while True:
                    fh.write(b"x" * 4096)
        code, lines = run_cli(["run", str(TINY), "--output", str(mount / "results")], capsys)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert code == 2 and len(lines) == 1
    assert ("Read-only file system" if case == "read-only" else "No space left on device") in lines[0]


# ---- 13 and --resume --------------------------------------------------------------------------------

RESUME_SUITE = """\
name: resume
model: {name: embedded, sft: {steps: 0}}
task: {name: synthetic, max_steps: 1, max_number: 20, train_size: 200}
algorithms:
  - {name: grpo_zero, label: first}
  - {name: grpo_zero, label: second}
budget: {steps: 4}
rollout: {completions_per_step: 8, group_size: 4, max_new_tokens: 8}
eval: {size: 8, batch_size: 8}
probe: cpu
threads: 1
"""


def _ctrl_c_twice_when(steps_file_glob: str, root: Path, stop: threading.Event) -> None:
    """Ctrl-C, then Ctrl-C again 50 ms later, once a step of the watched run is written."""
    while not stop.is_set():
        found = [p for p in root.glob(steps_file_glob) if p.stat().st_size > 0]
        if found:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.02)


def test_a_second_ctrl_c_keeps_the_partial_result_and_resume_finishes_the_suite(tmp_path: Path) -> None:
    suite = tmp_path / "resume.yaml"
    suite.write_text(RESUME_SUITE)
    out = tmp_path / "out"
    stop = threading.Event()
    interrupter = threading.Thread(target=_ctrl_c_twice_when, args=("resume/*/runs/second-seed0/steps.jsonl", out, stop))
    interrupter.start()
    try:
        report_path, code = run_suite(str(suite), [], str(out), quiet())
    finally:
        stop.set()
        interrupter.join()
    assert code == 130
    report = json.loads(report_path.read_text())
    first, second = report["runs"]
    assert report["status"] == "interrupted"
    assert first["status"] == "ok" and first["budget"]["steps"] == 4
    # 13: the run in progress kept what it measured, though Ctrl-C came twice
    assert second["status"] == "interrupted" and second["error"] == "interrupted by the user"
    assert second["budget"]["steps"] >= 1 and second["metrics"]

    report_path_again, code = run_suite(None, [], None, quiet(), resume=str(report_path.parent))
    assert report_path_again == report_path and code == 0
    resumed = json.loads(report_path.read_text())
    assert resumed["status"] == "complete"
    assert resumed["runs"][0] == first  # kept as it was
    assert resumed["runs"][1]["status"] == "ok" and resumed["runs"][1]["budget"]["steps"] == 4
    [entry] = resumed["resumed"]
    assert entry["kept"] == ["first/seed0"] and entry["rerun"] == ["second/seed0"]


def test_resume_refuses_what_it_cannot_resume(tmp_path: Path, capsys) -> None:
    code, lines = run_cli(["run", "--resume", str(tmp_path)], capsys)
    assert code == 2 and lines == [f"error: --resume {tmp_path}: no report.json there; give a results directory "
                                   "such as results/<suite>/<timestamp>"]
    code, lines = run_cli(["run", str(TINY), "--resume", str(tmp_path)], capsys)
    assert code == 2 and "not both" in lines[0]
    code, lines = run_cli(["run", "--resume", str(tmp_path), "--set", "budget.steps=1"], capsys)
    assert code == 2 and "--set and --output do not apply" in lines[0]
