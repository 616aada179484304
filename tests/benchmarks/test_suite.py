"""Smoke test of the benchmark suite (quick sizes): every benchmark runs and reports sane
ratios. No timing is asserted; the numbers themselves are in docs/performance.md."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from benchmarks.run_all import BENCHMARKS, run_suite
from simulation.ckd import resolve_ckd_source

try:
    resolve_ckd_source()
    CKD_AVAILABLE = True
except FileNotFoundError:  # a checkout without ../shared/data: that benchmark must say so
    CKD_AVAILABLE = False

# Besides the ratios, what each benchmark's JSON must hold.
EXPECTED_KEYS = {
    "platform_overhead": {
        "federated_round_seconds",
        "plain_round_seconds",
        "engine_startup_seconds",
    },
    "aggregation": {"rows", "streamed", "params"},
    "communication": {"uplink_bytes_per_site_per_round", "auc", "model_bytes_fp32"},
    "data_path": {"images_per_second"},
    "dp_cost": set(),
    "simulation_scale": {"rows"},
}
EXPECTED_RATIOS = {
    "platform_overhead": {
        "federated_over_plain_round",
        "federated_over_plain_round_cpu",
        "startup_over_plain_round",
    },
    "aggregation": {
        "time_per_update_ours_over_flower_k_max",
        "peak_extra_memory_ours_models_k_max",
        "streamed_peak_memory_k_max_over_k3",
    },
    "communication": {"uplink_fp16_over_fp32", "abs_delta_auc_fp16", "uplink_fp32_over_model"},
    "data_path": {"loader_cached_over_demand", "loader_uncached_over_demand"},
    "dp_cost": set(),
    "simulation_scale": set(),
}


@pytest.mark.slow
def test_quick_suite_writes_every_result_with_finite_positive_ratios(tmp_path):
    assert set(EXPECTED_KEYS) == set(BENCHMARKS)
    results = {r["name"]: r for r in run_suite(list(BENCHMARKS), quick=True, out_dir=tmp_path)}
    summary = (tmp_path / "SUMMARY.md").read_text()
    for name in BENCHMARKS:
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["name"] == results[name]["name"] == name
        assert name in summary
        if importlib.util.find_spec(BENCHMARKS[name]) is None:  # another branch adds it
            assert result["status"] == "missing"
            continue
        if name == "communication" and not CKD_AVAILABLE:  # its AUC run trains on UCI CKD
            assert result["status"] == "failed"
            assert "UCI CKD table not found" in result["reason"]
            continue
        assert result.get("status") is None, result.get("reason")
        assert EXPECTED_KEYS[name] <= set(result), name
        assert EXPECTED_RATIOS[name] <= set(result["ratios"]), name
        assert result["ratios"], name
        assert result["machine"]["logical_cores"] >= 1
        for key, value in result["ratios"].items():
            assert math.isfinite(value), (name, key)
            # an absolute difference may be exactly 0; every other ratio is a positive quantity
            assert value >= 0 if key.startswith("abs_") else value > 0, (name, key, value)
        for key in result["targets"]:
            assert key in result["ratios"], (name, key)
    aggregation = results["aggregation"]
    assert all(row["max_abs_difference"] == 0.0 for row in aggregation["rows"])
    communication = results["communication"]
    if CKD_AVAILABLE:
        assert communication["ratios"]["uplink_fp16_over_fp32"] < 0.6
