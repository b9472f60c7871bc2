"""Autotuning bookkeeping of the Triton kernels (kernels/triton/tuning.py): stored configs per device, forcing one
config, and the per-config check against the fp32 reference — under the interpreter on the CPU, where each kernel
has one config, and with faults injected to see that a wrong config is caught."""

from __future__ import annotations

import json

import pytest
import torch

triton = pytest.importorskip("triton")

from kernels.triton import tuning  # noqa: E402
from reference import ConvProblem  # noqa: E402


def test_device_names_become_file_names():
    assert tuning.device_slug("NVIDIA H200") == "nvidia-h200"
    assert tuning.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert tuning.store_path("NVIDIA H200", "3.6.0").name == "nvidia-h200-triton3.6.0.json"


def test_launch_keys_name_kernel_dtypes_scalars_and_flags():
    class K:
        __name__ = "_k"
    x = torch.empty(2, dtype=torch.bfloat16)
    key = tuning.launch_key(K(), (x, x.float()), (8, 16, 1), {"RELU": True, "R": 3})
    assert key == "_k|bfloat16,float32|8,16,1|R=3,RELU=1"


def test_stored_configs_round_trip_and_merge_skips_a_cut_line(tmp_path):
    cfg = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3)
    lines = tmp_path / "tuned.jsonl"
    s = tuning.Store(None, lines)
    s.add("k1", cfg)
    s.add("k2", cfg)
    with open(lines, "a") as f:
        f.write('{"key": "k3", "conf')  # a writer killed mid-line
    target = tmp_path / "nvidia-h200-triton3.6.0.json"
    path, added = tuning.merge(lines, "NVIDIA H200", target)
    assert path == target and added == 2
    doc = json.loads(target.read_text())
    assert doc["device"] == "NVIDIA H200" and set(doc["configs"]) == {"k1", "k2"}
    again = tuning.Store(target)
    got = again.lookup("k1")
    assert (got.kwargs, got.num_warps, got.num_stages) == ({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 3)
    assert again.lookup("missing") is None and again.hits == 1
    assert tuning.merge(lines, "NVIDIA H200", target)[1] == 0, "merging twice adds nothing"
