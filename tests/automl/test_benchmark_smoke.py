"""benchmarks/train_step.py runs end to end on CPU and writes every row it promises (no timing is judged)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"
TINY_CPU = ["--device", "cpu", "--tiny", "--size", "64", "--infer-size", "64", "96", "--steps", "1", "--warmup", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny network gains nothing from threads, and on a busy 2-core machine two spinning
    OpenMP threads make every first op call seconds slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_benchmark():
    spec = importlib.util.spec_from_file_location("train_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_a_timed_row_for_every_impl_precision_and_case(tmp_path):
    bench = load_benchmark()
    out = tmp_path / "bench.json"

    returned = bench.main([*TINY_CPU, "--out", str(out)])

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))
    rows = {(r["impl"], r["precision"], r["case"]): r for r in written["results"]}
    assert set(rows) == {(i, p, c) for i in ("ours", "hf") for p in ("fp32", "tf32", "bf16") for c in ("train", "infer")}
    for key, row in rows.items():
        assert row["status"] == "ok", (key, row.get("error"))
        assert row["steps_timed"] == len(row["times_ms"]) == 1
        assert row["median_ms"] > 0 and row["images_per_s"] > 0, key
        if row["case"] == "train":
            assert row["batch"] == 2 and (row["height"], row["width"]) == (64, 64)
            assert math.isfinite(row["loss"]) and row["loss"] > 0, key
        else:
            assert row["batch"] == 1 and (row["height"], row["width"]) == (64, 96)
    ratios = {(r["precision"], r["case"]): r for r in written["ratios"]}
    assert set(ratios) == {(p, c) for p in ("fp32", "tf32", "bf16") for c in ("train", "infer")}
    assert all(r["time_ratio"] > 0 for r in ratios.values())
    assert written["environment"]["torch"] and written["environment"]["transformers"]


def test_both_networks_have_the_same_architecture_but_swins_unused_final_norm():
    bench = load_benchmark()
    config = bench.hf_config_dict(tiny=True)
    ours, _ = bench.build_ours(config)
    hf = bench.build_hf(config)

    last_stage_channels = config["backbone_config"]["embed_dim"] * 8
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(hf) - count(ours) == 2 * last_stage_channels  # weight and bias of the LayerNorm HF keeps unused


def test_a_failing_case_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    bench = load_benchmark()

    def out_of_memory(config):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(bench, "build_hf", out_of_memory)
    result = bench.main([*TINY_CPU, "--cases", "infer", "--precision", "fp32", "--out", str(tmp_path / "bench.json")])

    rows = {r["impl"]: r for r in result["results"]}
    assert rows["ours"]["status"] == "ok" and rows["ours"]["median_ms"] > 0
    assert rows["hf"]["status"] == "error" and "out of memory" in rows["hf"]["error"]
    assert result["ratios"] == []
