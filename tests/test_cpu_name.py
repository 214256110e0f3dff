"""How the CPU is named in the fingerprint (rlbench/environment.py): /proc/cpuinfo, then the platform."""

from __future__ import annotations

import builtins

import pytest

import rlbench.environment as environment
from rlbench.environment import cpu_model_name


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
    monkeypatch.setattr(environment.platform, "processor", lambda: "aarch64-cpu")
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
    monkeypatch.setattr(environment.platform, "processor", lambda: processor)
    monkeypatch.setattr(environment.platform, "machine", lambda: machine)
    assert cpu_model_name() == expected
