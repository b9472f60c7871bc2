"""Autotuning bookkeeping of the Triton kernels (kernels/triton/tuning.py): stored configs per device, forcing one
config, and the per-config check against the fp32 reference — under the interpreter on the CPU, where each kernel
has one config, and with faults injected to see that a wrong config is caught."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

if importlib.util.find_spec("triton") is None:  # only a missing package skips; a broken one fails (test_import_rules)
    pytest.skip("triton is not installed", allow_module_level=True)

import triton  # noqa: E402

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


def _small(**kw):
    return ConvProblem(**{**dict(N=2, C=32, H=6, W=6, K=32, R=3, S=3, padding=(1, 1), layout="channels_last"), **kw})


def test_every_config_is_run_and_checked_against_the_fp32_reference():
    from kernels.triton import conv

    problems = [_small(), _small(R=1, S=1, padding=(0, 0))]
    rows = tuning.check_configs(problems, "cpu")
    assert {(r["part"], r["status"]) for r in rows} == {(part, "ok") for part in ("forward", "dgrad", "wgrad")}
    # under the interpreter each kernel has one config: one row per part and problem, naming what ran
    assert len(rows) == 6 and all(r["index"] == 0 and r["config"]["source"] == "forced" for r in rows)
    kernels = {r["kernel"] for r in rows}
    assert {"_conv_fwd_gemm_kernel", "_pointwise_gemm_kernel", "_conv_wgrad_gemm_kernel"} <= kernels
    assert not conv._PLANS, "a forced config is never kept as a plan"


def test_a_config_computing_wrong_results_is_reported(monkeypatch):
    real = tuning.conv_reference

    def off_by_a_bit(p, *operands):  # as if the config summed a tap twice
        ref = real(p, *operands)
        return {**ref, "dgrad": tuple(t * 1.1 for t in ref["dgrad"])}

    monkeypatch.setattr(tuning, "conv_reference", off_by_a_bit)
    rows = tuning.check_configs([_small()], "cpu")
    status = {r["part"]: r["status"] for r in rows}
    assert status == {"forward": "ok", "dgrad": "mismatch", "wgrad": "ok"}
    assert "outside rtol" in next(r for r in rows if r["part"] == "dgrad")["error"]


def test_forcing_past_the_last_config_ends_the_enumeration():
    calls, _ = tuning.conv_parts(_small(), "cpu")
    seen = list(tuning.each_config(calls["forward"]))
    assert [i for i, _, _ in seen] == [0], "the interpreter's single config, then NoSuchConfig"
    assert tuning.precompile(_small(), "cpu", parts=("forward",)) == {"configs": 1, "errors": []}
