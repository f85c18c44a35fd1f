"""The fine-tuning benchmark scripts run end to end (CPU smoke runs: --quick, --tiny) and write their JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# one thread: the smoke runs stay fast even when other processes share the cores
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# The benchmarks' smoke tests take about two minutes on 2 cores: `make test-bench` runs them, `make test` does not.
pytestmark = pytest.mark.bench


def run_script(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_bench_finetune_quick_compares_cached_with_uncached_latents(tmp_path):
    out = run_script("bench_finetune.py", "--quick", "--json", str(tmp_path / "bench.json"))
    assert "cached/uncached" in out
    payload = json.loads((tmp_path / "bench.json").read_text())
    rows = payload["results"][0]["rows"]
    assert [row["prior_preservation"] for row in rows] == [False, True]
    for row in rows:
        assert row["uncached_steps_per_s"]["best"] > 0 and row["cached_steps_per_s"]["best"] > 0
        assert row["cache_s_median"] > 0  # the cached runs did encode the data set once
        assert row["max_loss_difference"] < 1e-3  # same draws: the same losses up to float rounding


def test_bench_similarity_quick_compares_dva_with_pytorch_msssim(tmp_path):
    out = run_script("bench_similarity.py", "--quick", "--json", str(tmp_path / "similarity.json"))
    assert "pytorch-msssim" in out
    assert json.loads((tmp_path / "similarity.json").read_text())


def test_bench_fid_compares_extraction_with_pytorch_fid_and_a_cached_evaluation(fid_weights, tmp_path):
    out = run_script("bench_fid.py", "--n", "4", "--size", "64", "--cached-repeats", "1", "--device", "cpu",
                     "--fid-weights", str(fid_weights), "--json", str(tmp_path / "fid.json"))
    assert "pytorch-fid" in out
    assert json.loads((tmp_path / "fid.json").read_text())


def test_bench_attribution_quick_measures_maps_and_induction_on_fresh_phantoms(tiny_radbert_model, tmp_path):
    out = run_script("bench_attribution.py", "--quick", "--seed", "31337", "--model", str(tiny_radbert_model),
                     "--json", str(tmp_path / "attribution.json"))
    assert "| sdedit 0.55, K = 4 |" in out and "| ddim-inversion 0.6 |" in out and "| all zones |" in out
    assert "seed 31337" in out and "image AUROC (energy) | image AUROC (p99.5) |" in out
    payload = json.loads((tmp_path / "attribution.json").read_text())
    assert [row["setting"] for row in payload["attribution"]] == [
        "sdedit 0.55", "sdedit 0.85", "ddim-inversion 0.6", "sdedit 0.55, K = 4", "sdedit 0.55 vs reconstruction",
        "sdedit 0.55, K = 4 vs reconstruction", "ddim-inversion 0.6 vs reconstruction"]
    assert all(0.0 <= row["auroc"] <= 1.0 and row["seconds_per_image"] > 0 for row in payload["attribution"])
    assert payload["settings"]["seed"] == 31337
    assert all(0.0 <= row["image_auroc_energy"] <= 1.0 and 0.0 <= row["image_auroc_p99.5"] <= 1.0
               for row in payload["attribution"]), "the uncalibrated model: map-derived image-level scores only"
    assert set(payload["induction"]["zones"]) == {"right upper", "right middle", "right lower", "left upper",
                                                  "left middle", "left lower"}
    assert set(payload["induction"]["zones_vs_reconstruction"]) == set(payload["induction"]["zones"])


def test_gpu_check_tiny_runs_every_part_and_records_a_failed_and_a_stopped_part_without_ending_the_others(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--out", str(tmp_path),
                             "--fail-part", "diffusers", "--limit", "fast=0.5"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # not every part is ok
    payload = json.loads((tmp_path / "gpu-check.json").read_text())
    parts = {record["part"]: record for record in payload["parts"]}
    assert list(parts) == ["build", "diffusers", "dva", "fast", "writing", "finetune", "dva-compile"]
    assert parts["diffusers"]["status"] == "failed" and "--fail-part" in parts["diffusers"]["reason"]
    assert parts["fast"]["status"] == "timeout" and "stopped after" in parts["fast"]["reason"]
    assert parts["dva-compile"]["status"] == "skipped"  # torch.compile: on a GPU only
    assert all(parts[name]["status"] == "ok" for name in ("build", "dva", "writing", "finetune")), parts
    assert {"python", "torch", "cpu_count"} <= set(payload["machine"]) and payload["tiny"] is True

    stand_ins = parts["build"]["results"]["stand_ins"]
    assert [row["name"].split(" ")[0] for row in stand_ins] == ["RadBERT", "SD"]
    assert [row["batch"] for row in parts["dva"]["results"]["sampling"]] == [1, 2]
    assert all(row["images_per_s"] > 0 and row["unet_evaluations_per_image"] > 0
               for row in parts["dva"]["results"]["sampling"])
    assert [row["side"] for row in parts["writing"]["results"]["writing"]] == [64, 256]
    assert parts["writing"]["results"]["setting"]["entry"] == "tiny-phantom"  # read from the registry at run time
    finetune = parts["finetune"]["results"]["finetune"]
    assert finetune["steps"] == 4 and finetune["steps_per_s"] > 0 and "--entry finetune-thesis" in finetune["command"]

    markdown = (tmp_path / "gpu-check.md").read_text()
    assert "| part | status | s | limit s | reason |" in markdown and "| diffusers | failed |" in markdown
    assert "| fast | timeout |" in markdown and "| dva run | 2 |" in markdown and "| fine-tuning |" in markdown
    assert "part diffusers failed" in (tmp_path / "gpu-check.log").read_text()
    assert not (tmp_path / "work").exists()  # stand-ins and outputs removed: only the three result files stay


def test_bench_scale_quick_measures_memory_and_processes(tmp_path):
    out = run_script("bench_scale.py", "--quick", "--json", str(tmp_path / "scale.json"))
    assert "peak RSS" in out and "vs 1 process" in out
    payload = json.loads((tmp_path / "scale.json").read_text())
    assert [row["images"] for row in payload["memory"]] == [8, 16]
    assert [row["processes"] for row in payload["processes"]] == [1, 2]


def test_bench_evaluations_quick_charges_each_setting_its_unet_evaluations(tmp_path):
    out = run_script("bench_evaluations.py", "--quick", "--json", str(tmp_path / "evaluations.json"))
    assert "The frontier" in out and "| UNet evaluations per image |" in out
    rows = json.loads((tmp_path / "evaluations.json").read_text())["rows"]
    # ddim-inversion 2 steps at strength 0.6, guidance 4, against the reconstruction: 1 + 2 + 1 evaluations;
    # sdedit 2 steps at 0.55 without guidance: 1.
    assert {row["setting"]: row["evaluations"] for row in rows if not row["calibrated"]} == {
        "ddim-inversion 0.6, 2 steps, guidance 4 vs reconstruction": 4,
        "sdedit 0.55, dpm-solver++ 2 steps, guidance 1": 1}
    assert all(0 <= row["auprc"] <= 1 for row in rows)


def test_bench_dicom_quick_times_the_dicom_outputs_against_the_png_baseline():
    out = run_script("bench_dicom.py", "--quick")
    assert "baseline: full-size counterfactual PNG" in out and "dicom_files (3 DICOM outputs)" in out


def test_bench_write_quick_measures_both_writing_goals_against_baselines_of_the_same_run(tmp_path):
    out = run_script("bench_write.py", "--quick", "--json", str(tmp_path / "write.json"))
    assert "added by 2500x2048" in out and "of the simulated rate" in out and "--fullsize all" in out
    payload = json.loads((tmp_path / "write.json").read_text())
    added = payload["added_cost"]
    assert added["small_s"] > 0 and added["large_s"] > 0 and added["ratio"] == added["large_s"] / added["small_s"]
    simulated = payload["simulated_accelerator"]
    assert set(simulated["rows"]) == {"64x64", "2500x2048", "2500x2048, inline (no threads)"}
    assert 0 < simulated["large_of_simulated"] <= 1.05
    assert [row["original_hw"] for row in payload["write_outputs"]] == [[1024, 1024], [2500, 2048]]


def test_measure_calibration_calibrates_a_copy_of_the_bundled_model_and_tables_raw_against_calibrated(tmp_path):
    out = run_script("measure_calibration.py", "--seed", "11", "--n", "1", "--calibration-images", "3", "--steps", "2",
                     "--work", str(tmp_path / "work"))
    assert "| seed | map | pixel AUPRC | best Dice | null ratio | image AUROC | image AUPRC |" in out
    assert "| 11 | raw map, score: top 1% of its magnitude |" in out and "| 11 | **calibrated (dva's)** |" in out
    assert (tmp_path / "work" / "model" / "calibration" / "calibration.json").is_file(), "a copy was calibrated"


def test_bench_tiling_quick_measures_tiled_maps_and_super_resolution_against_their_baselines(tmp_path):
    out = run_script("bench_tiling.py", "--quick", "--json", str(tmp_path / "tiling.json"))
    assert "single-pass (64 px)" in out and "tiled (128 px)" in out and "bicubic" in out
    payload = json.loads((tmp_path / "tiling.json").read_text())
    assert [row["tile"] for row in payload["maps"]["128"]] == ["off", "auto"]
    assert [row["method"] for row in payload["super_resolution"]][:2] == ["bicubic", "VAE round trip of bicubic"]
