"""How the CPU's peak is measured and cached, and the CPU named, with the clock and the matmul recorded so the
figures are worked by hand (tests/test_flops.py checks the FLOP counts and the GPU table)."""

from __future__ import annotations

import builtins
import json

import pytest
import torch

import rlbench.measure.flops as flops
from rlbench.measure.flops import CPU_PEAK_CACHE_FILE, cpu_model_name, cpu_peak_flops, measure_matmul_flops


class Clock:
    """perf_counter as the timed matmuls saw it: each call to mm lasts the next of `durations` seconds."""

    def __init__(self, durations: list[float]) -> None:
        self.now, self.durations, self.shapes = 100.0, list(durations), []

    def perf_counter(self) -> float:
        return self.now

    def mm(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.shapes.append((tuple(a.shape), tuple(b.shape), a.dtype))
        if len(self.shapes) > 1:  # the first is the untimed warm-up
            self.now += self.durations.pop(0)


@pytest.fixture
def clock(monkeypatch):
    recorded = Clock([0.5, 0.25, 0.4, 0.1])
    monkeypatch.setattr(flops.time, "perf_counter", recorded.perf_counter)
    monkeypatch.setattr(torch, "mm", recorded.mm)
    return recorded


def test_matmul_rate_is_the_fastest_of_the_timed_runs(clock):
    # n 4: 2 x 4^3 = 128 FLOPs per matmul; a warm-up, then 3 timed runs of 0.5, 0.25, 0.4 s: the best,
    # 0.25 s, gives 128 / 0.25 = 512 FLOP/s (the fourth duration, 0.1 s, is never reached)
    assert measure_matmul_flops(n=4) == 512.0
    assert clock.shapes == [((4, 4), (4, 4), torch.float32)] * 4


def test_matmul_rate_defaults_to_three_runs_of_2048(clock):
    # 2 x 2048^3 = 17,179,869,184 FLOPs over the best of 0.5, 0.25, 0.4 s = 68,719,476,736 FLOP/s
    assert measure_matmul_flops() == 2 * 2048**3 / 0.25
    assert clock.shapes[0][0] == (2048, 2048) and len(clock.shapes) == 4


def test_cpu_peak_is_measured_with_the_default_size_and_cached_atomically(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(flops, "measure_matmul_flops", lambda n, reps: calls.append((n, reps)) or 5e10)
    cache_dir = tmp_path / "a" / "b"  # not there yet: made, parents too
    assert cpu_peak_flops(cache_dir) == 5e10
    assert calls == [(2048, 3)]
    text = (cache_dir / CPU_PEAK_CACHE_FILE).read_text()
    (key, entry), = json.loads(text).items()
    assert key.endswith("fp32 matmul 2048") and (entry["matmul_size"], entry["reps"]) == (2048, 3)
    assert [p.name for p in cache_dir.iterdir()] == [CPU_PEAK_CACHE_FILE]  # no temporary file left
    assert cpu_peak_flops(cache_dir) == 5e10 and calls == [(2048, 3)]  # read back, not measured again
    assert cpu_peak_flops(cache_dir, n=64, reps=1) == 5e10 and calls[-1] == (64, 1)  # another key: measured


def test_cpu_model_name_reads_the_model_name_line(monkeypatch):
    cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n"
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            from io import StringIO

            return StringIO(cpuinfo)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert cpu_model_name() == "AMD EPYC 7B13"
    cpuinfo = "processor\t: 0\nmodel name\t: \nCPU part\t: 0xd0c\n"  # an empty name: the platform's instead
    monkeypatch.setattr(flops.platform, "processor", lambda: "aarch64-cpu")
    assert cpu_model_name() == "aarch64-cpu"


@pytest.mark.parametrize(("processor", "machine", "expected"),
                         [("Intel64 Family 6", "x86_64", "Intel64 Family 6"), ("", "x86_64", "x86_64"),
                          ("", "", "unknown CPU")])
def test_cpu_model_name_without_proc_cpuinfo(monkeypatch, processor, machine, expected):
    real_open = builtins.open

    def no_cpuinfo(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    monkeypatch.setattr(flops.platform, "processor", lambda: processor)
    monkeypatch.setattr(flops.platform, "machine", lambda: machine)
    assert cpu_model_name() == expected
