"""Resuming a report, and what ends a runner: one runner per results folder (a lock), a resume runs
only the suite its report recorded and records its commit, SIGHUP is a Ctrl-C, a closed stdout pipe
still leaves a finished report, and a worker never outlives its runner or loses a SIGTERM that came
while it started. Each test reproduces a defect found by trying these as a user would.

Real objects: a real saved report (tests/fixtures/reports/ci_v2.json, every run ok, so a resume
keeps them all and trains nothing), the real CLI in-process or as a subprocess for signals and pipes.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from rlbench.cli import main
from rlbench.process import PARENT_ENV, InterruptGate, stop_signals_blocked, worker_command
from rlbench.report.io import write_json_atomic
from rlbench.report.schema import load_report
from rlbench.results import report_lock

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "reports" / "ci_v2.json"
TINY = ROOT / "tests" / "data" / "tiny.yaml"


def results_folder(tmp_path: Path) -> Path:
    """A finished results folder as `rlbench run` leaves it: report.json and suite.resolved.yaml."""
    out = tmp_path / "results" / "ci" / "20261201T000000Z"
    out.mkdir(parents=True)
    report = load_report(FIXTURE)
    write_json_atomic(out / "report.json", report)
    (out / "suite.resolved.yaml").write_text(yaml.safe_dump(report["suite"], sort_keys=False))
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, [" ".join(line.split()) for line in err.splitlines() if line.strip()]


def wait_for(check, seconds: float = 120.0) -> None:
    """A wait, not a bound: returns as soon as `check()` holds."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


# ---- D2: one runner per folder -------------------------------------------------------------------


def test_a_resume_while_another_runner_holds_the_folder_is_refused(tmp_path: Path, capsys) -> None:
    out = results_folder(tmp_path)
    before = (out / "report.json").read_bytes()
    with report_lock(out, str(out)):  # the runner that started this report, still alive
        code, lines = run_cli(["run", "--resume", str(out)], capsys)
    assert code == 2
    assert lines == [f"error: --resume {out}: another rlbench (pid {os.getpid()}) is running this report now; "
                     "let it finish, or stop it (Ctrl-C) and resume then"]
    assert (out / "report.json").read_bytes() == before  # nothing touched


def test_the_lock_goes_with_its_runner_however_it_dies(tmp_path: Path) -> None:
    out = results_folder(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from rlbench.results import report_lock\n"
                               f"with report_lock(Path({str(out)!r}), 'x'):\n    print('held', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"pid {holder.pid}"):
        with report_lock(out, "x"):
            pass
    holder.kill()
    holder.wait()
    with report_lock(out, "x"):  # the kernel released it with the process
        pass


# ---- D3: a resume runs the suite its report recorded, at the commit it records ----------------------


@pytest.mark.parametrize("edit, named", [
    (lambda s: s["budget"].update(steps=50), "budget.steps"),
    (lambda s: s["algorithms"][0]["params"].update(lr=0.5), "algorithms[0].params.lr"),
    (lambda s: s.update(distributed={"nproc_per_node": 2, "backend": "gloo"}), "distributed"),  # another suite's file
])
def test_a_resume_refuses_an_edited_or_replaced_suite_file(tmp_path: Path, capsys, edit, named: str) -> None:
    out = results_folder(tmp_path)
    suite = yaml.safe_load((out / "suite.resolved.yaml").read_text())
    edit(suite)
    (out / "suite.resolved.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    code, lines = run_cli(["run", "--resume", str(out)], capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: --resume {out}: suite.resolved.yaml is not the suite this report ran ({named}")
    assert "edited or replaced" in lines[0]
    assert json.loads((out / "report.json").read_text())["status"] == "complete"  # not reopened


def test_a_resume_records_the_commit_it_ran_at(tmp_path: Path, monkeypatch) -> None:
    from rlbench.runner import run_suite

    monkeypatch.chdir(ROOT)  # the report names suites/ci.yaml, relative to the repository
    out = results_folder(tmp_path)
    report_path, code = run_suite(None, [], None, Console(file=io.StringIO(), width=200), resume=str(out))
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["status"] == "complete"
    [entry] = report["resumed"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert entry["git"]["commit"] == head != report["environment"]["git"]["commit"]
    assert entry["kept"] == ["grpo_zero/seed0", "ppo_rules/seed0"] and entry["rerun"] == []


# ---- D4: SIGHUP, and a worker that outlives its runner ------------------------------------------------


def test_sighup_is_a_ctrl_c_in_the_runner_unless_started_under_nohup() -> None:
    outer = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal starts it (these tests may run under nohup)
    gate = InterruptGate()
    gate.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            with gate.opened():
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(5)  # the handler raises before this ends
        assert gate.interrupted
    finally:
        gate.restore()
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does
    gate = InterruptGate()
    gate.install()
    try:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        gate.restore()
        signal.signal(signal.SIGHUP, previous)
        signal.signal(signal.SIGHUP, outer)


def test_a_closed_terminal_ends_the_suite_with_the_report_finished(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "rlbench", "run", str(TINY), "--output", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # not nohup's
    wait_for(lambda: list(out.glob("tiny/*/report.json")) or proc.poll() is not None)
    [report_path] = list(out.glob("tiny/*/report.json"))  # saved as `running` before the first stage
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    report = json.loads(report_path.read_text())
    assert report["status"] == "interrupted"
    assert {r["status"] for r in report["runs"]} == {"interrupted"}


def _spec_fifo(tmp_path: Path) -> tuple[Path, int]:
    """A fifo for the worker's spec, held open here for writing (O_RDWR never blocks): the worker's
    open succeeds and its read waits for the spec, with the fifo among its open files."""
    fifo = tmp_path / "spec.json"
    os.mkfifo(fifo)
    return fifo, os.open(fifo, os.O_RDWR)


def _holds(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (it has run its own code that far)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_a_worker_dies_with_its_runner_even_by_sigkill(tmp_path: Path) -> None:
    fifo, writer = _spec_fifo(tmp_path)
    runner = ("import os, subprocess, sys, time\n"
              f"p = subprocess.Popen({worker_command(fifo)!r}, env=dict(os.environ, {PARENT_ENV}=str(os.getpid())))\n"
              "print(p.pid, flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    worker = int(proc.stdout.readline())
    wait_for(lambda: _holds(worker, fifo))  # past the boot that ties it to the runner, waiting for its spec
    proc.kill()
    proc.wait()
    try:
        wait_for(lambda: gone(worker), 60)
    finally:
        if not gone(worker):
            os.kill(worker, signal.SIGKILL)
        os.close(writer)


def test_a_sigterm_while_the_worker_starts_is_held_until_it_can_write_its_result(tmp_path: Path) -> None:
    fifo, writer = _spec_fifo(tmp_path)
    run_dir = tmp_path / "run"
    with stop_signals_blocked():
        proc = subprocess.Popen(worker_command(fifo), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM)  # long before it has a handler: without the block it dies with nothing
    wait_for(lambda: _holds(proc.pid, fifo) or proc.poll() is not None)
    assert proc.poll() is None, f"the worker died of the SIGTERM (exit code {proc.returncode}), with no result"
    os.write(writer, json.dumps({"run_dir": str(run_dir), "suite_path": "unused"}).encode())
    os.close(writer)  # the worker reads its spec to the end
    proc.wait(timeout=120)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "interrupted" and "finished" in result


# ---- D5: a closed stdout pipe -----------------------------------------------------------------------


def test_a_closed_stdout_pipe_still_finishes_and_saves_the_report(tmp_path: Path) -> None:
    out = results_folder(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -1` that has already exited: every write gets EPIPE
    proc = subprocess.run([sys.executable, "-m", "rlbench", "run", "--resume", str(out)], cwd=ROOT,
                          stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write_end)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and len(report["resumed"]) == 1
    assert proc.returncode == 0, proc.stderr
    assert "stdout was closed (broken pipe)" in proc.stderr and "Traceback" not in proc.stderr
