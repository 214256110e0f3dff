"""The numerical-environment fingerprint and the hardware class (rlbench/environment.py).

The class rule is checked on environment blocks as the two machine kinds this project runs on
write them (an AMD EPYC with AVX2; an Intel Xeon with AVX-512 and AMX) and on a GPU; the
fingerprint itself is taken on whatever machine runs the tests, so its assertions follow from
torch and /proc rather than naming this machine. The GPU path runs its real code with a stand-in
at the torch.cuda and pynvml boundary only.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from rlbench import environment as env_module
from rlbench.environment import (
    ISA_FEATURES,
    NUMERIC_ENV_VARS,
    environment,
    gpu_info,
    hardware_class,
    isa_tier,
    stage_numerics,
)

AMD = {"cpu": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "cpu_features": ["avx2", "fma"], "cpu_capability": "AVX2",
       "numeric_env": {}, "cpu_cores": 2, "torch_threads": 2, "ram_bytes": 24 * 2**30, "hostname": "vm", "gpu": None}
INTEL = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_vendor": "GenuineIntel",
         "cpu_features": ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"],
         "cpu_capability": "AVX512", "numeric_env": {}, "cpu_cores": 2, "torch_threads": 2, "gpu": None}


def test_the_two_machine_kinds_get_their_classes() -> None:
    assert hardware_class(AMD) == "cpu-amd-epyc-avx2"
    assert hardware_class(INTEL) == "cpu-intel-xeon-amx"


def test_the_class_names_the_model_but_not_the_machine() -> None:
    named = dict(INTEL, cpu="Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")
    assert hardware_class(named) == "cpu-intel-xeon-platinum-8481c-amx"
    assert hardware_class(dict(AMD, cpu="AMD EPYC 7B13 64-Core Processor")) == "cpu-amd-epyc-7b13-avx2"
    # host name, cores, threads and RAM name one machine (or a VM size), not a kind of machine
    other_vm = dict(AMD, hostname="ci-runner-7", cpu_cores=16, torch_threads=16, ram_bytes=2**40)
    assert hardware_class(other_vm) == hardware_class(AMD)


def test_the_isa_tier_follows_the_kernels_in_use() -> None:
    assert isa_tier(dict(INTEL, cpu_features=["avx2", "avx512f"])) == "avx512"
    assert isa_tier(dict(INTEL, cpu_features=["avx2", "avx512f", "avx512_bf16"])) == "avx512-bf16"
    # forcing other kernels makes another class: other kernels, other floats
    assert isa_tier(dict(INTEL, cpu_capability="AVX2")) == "avx2"  # ATEN_CPU_CAPABILITY=avx2
    assert isa_tier(dict(INTEL, numeric_env={"MKL_ENABLE_INSTRUCTIONS": "AVX2"})) == "avx2"
    assert isa_tier(dict(INTEL, numeric_env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})) == "avx512"
    assert isa_tier(dict(AMD, cpu_capability="DEFAULT")) == "default"
    assert isa_tier(dict(AMD, numeric_env={"MKL_ENABLE_INSTRUCTIONS": "AVX512"})) == "avx2"  # a limit never raises
    assert hardware_class(dict(INTEL, numeric_env={"MKL_ENABLE_INSTRUCTIONS": "AVX2"})) == "cpu-intel-xeon-avx2"


def test_a_gpu_class_is_the_device_name() -> None:
    gpu = dict(AMD, gpu={"name": "NVIDIA H100 80GB HBM3", "count": 8})
    assert hardware_class(gpu) == "gpu-h100-80gb-hbm3"  # whatever the host CPU
    assert hardware_class(dict(INTEL, gpu={"name": "NVIDIA H100 80GB HBM3", "count": 1})) == "gpu-h100-80gb-hbm3"
    assert hardware_class(dict(AMD, gpu={"name": "Tesla V100-SXM2-16GB"})) == "gpu-v100-sxm2-16gb"


def test_this_machines_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = environment()
    assert env["hardware_class"] == hardware_class(env) and env["hardware_class"].startswith(("cpu-", "gpu-"))
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(env["cpu_features"]) <= set(ISA_FEATURES)
    assert set(env["numeric_env"]) == set(NUMERIC_ENV_VARS) and env["numeric_env"]["OMP_NUM_THREADS"] == "1"
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["ram_bytes"] > 2**30
    if torch.backends.mkl.is_available():
        assert env["math_libraries"]["mkl"]
    if torch.backends.mkldnn.is_available():
        assert env["math_libraries"]["onednn"]
    if env["gpu"] is None:
        assert env["hardware_class"].endswith("-" + isa_tier(env))


def test_gpu_info_reads_torch_cuda_and_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in at the torch.cuda and pynvml boundary: the real gpu_info code around it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=0: SimpleNamespace(total_memory=85_045_035_008))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    nvml = SimpleNamespace(nvmlInit=lambda: None, nvmlShutdown=lambda: None,
                           nvmlSystemGetDriverVersion=lambda: b"550.54.15")
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    info = gpu_info()
    assert info == {"name": "NVIDIA H100 80GB HBM3", "count": 2, "cuda": "12.4", "driver": "550.54.15",
                    "compute_capability": "9.0", "total_bytes": 85_045_035_008}
    assert environment()["hardware_class"] == "gpu-h100-80gb-hbm3"
    assert stage_numerics()["kernels"] == "gpu NVIDIA H100 80GB HBM3"


def test_stage_numerics_names_versions_and_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    numerics = stage_numerics("cpu")
    versions = env_module.package_versions()
    assert numerics["torch"] == versions["torch"] and numerics["transformers"] == versions["transformers"]
    env = {"cpu_capability": env_module.cpu_capability(), "cpu_features": env_module.cpu_features(), "numeric_env": {}}
    assert numerics["kernels"] == f"cpu {env_module.cpu_vendor()} {isa_tier(env)}"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")  # oneDNN's generic kernels: other floats
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
    if isa_tier(env) != "default":
        assert stage_numerics("cpu")["kernels"] != numerics["kernels"]
