"""Memory-aware packing without a GPU: the share arithmetic, one probe of the largest network per sweep,
and a trial that ran out of GPU memory re-queued with a larger share."""

import json
from types import SimpleNamespace

import pytest
from ray.tune.execution.placement_groups import PlacementGroupFactory

from automl import packing
from automl.packing import GpuPacker, gpu_packer, gpu_share, is_cuda_oom, keep_to_share, larger_share, trials_per_gpu, without_auto_gpu
from automl.search.space import space_from_mapping
from automl.spec.load import load_spec
from model.errors import UserError

GIB = 2**30
H100 = 80 * GIB
QUERIES, LR = "model.mask_former.num_object_queries", "train.optim.lr"


@pytest.mark.parametrize(
    "peak_gib, share, per_gpu",
    [
        (3.0, 0.0625, 16),  # (3 + 0.59) GiB x 1.2 = 4.3 GiB: 5.4% of 80 GiB -> 1/16
        (12.0, 0.25, 4),  # 15.1 GiB = 18.9% -> 4/16
        (30.0, 0.5, 2),  # 36.7 GiB = 45.9% -> 8/16
        (70.0, 1.0, 1),  # more than the GPU: a whole one (an OOM later is the trial's own)
    ],
)
def test_share_is_peak_plus_context_plus_margin_rounded_up_to_sixteenths(peak_gib, share, per_gpu):
    assert gpu_share(int(peak_gib * GIB), H100) == share
    assert trials_per_gpu(share) == per_gpu


def test_share_never_rounds_below_the_need():
    for peak in range(0, 70 * GIB, GIB // 3):
        share = gpu_share(peak, H100)
        assert share * H100 >= (peak + packing.CUDA_CONTEXT_BYTES) * (1 + packing.SAFETY_MARGIN) or share == 1.0
        assert (share * 16).is_integer()


def test_a_packed_trial_caps_its_allocator_at_its_share(monkeypatch):
    import torch

    fractions = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction: fractions.append(fraction))
    keep_to_share(0.1875)
    keep_to_share(1.0)  # a reused process whose last trial was capped: the cap is lifted
    assert fractions == [0.1875, 1.0]


def test_larger_share_doubles_up_to_one_gpu():
    shares = [0.0625]
    while shares[-1] < 1.0:
        shares.append(larger_share(shares[-1]))
    assert shares == [0.0625, 0.125, 0.25, 0.5, 1.0] and larger_share(1.0) == 1.0
    assert len(shares) - 1 == packing.OOM_REQUEUES
    assert larger_share(0.375) == 0.75


def test_cuda_oom_is_recognised_in_a_trial_error():
    assert is_cuda_oom("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not is_cuda_oom("RuntimeError: shape mismatch")


LAYERS = "model.mask_former.dec_layers"


@pytest.fixture
def packer(tmp_path, monkeypatch):
    spec = load_spec(None)
    space = space_from_mapping({LR: {"min": 1e-5, "max": 1e-3}, QUERIES: {"options": [100, 200]}, LAYERS: {"min": 4, "max": 9}}, spec, "test")
    probes = []

    def fake_probe(base_spec, config):  # memory grows with queries and layers
        probes.append(dict(config))
        return config[QUERIES] // 100 * config[LAYERS] * GIB

    monkeypatch.setattr(packing, "probe_peak_memory", fake_probe)
    return GpuPacker({}, space, tmp_path / "sweep.gpu_shares.json", cpu=2.0, total_bytes=H100), probes


def test_one_probe_of_the_largest_network_sizes_every_trial(packer):
    packer, probes = packer
    assert packer.resources({LR: 1e-4, QUERIES: 100, LAYERS: 4}).required_resources == {"CPU": 2.0, "GPU": 0.3125}  # 18.6 GiB x 1.2 = 27.9% -> 5/16
    assert packer.resources({LR: 3e-4, QUERIES: 200, LAYERS: 9}).required_resources["GPU"] == 0.3125
    assert probes == [{QUERIES: 200, LAYERS: 9}]  # the learning rate is not the network's
    shares = json.loads(packer.shares_file.read_text())
    assert shares == {"probed": {QUERIES: 200, LAYERS: 9}, "peak_mib": 18 * 1024, "share": 0.3125}
    again = GpuPacker({}, packer.space, packer.shares_file, cpu=2.0, total_bytes=H100)  # --resume: no new probe
    assert again.resources({LR: 1e-4, QUERIES: 100, LAYERS: 5}).required_resources["GPU"] == 0.3125 and len(probes) == 1


def fake_trial(tmp_path, error, share):
    error_file = tmp_path / "error.txt"
    error_file.write_text(error)
    trial = SimpleNamespace(trial_id="t1", config={LR: 1e-4, QUERIES: 100, LAYERS: 4}, error_file=str(error_file),
                            placement_group_factory=PlacementGroupFactory([{"CPU": 2.0, "GPU": share}]))  # fmt: skip
    trial.update_resources = lambda pgf: setattr(trial, "placement_group_factory", pgf)
    return trial


def test_a_trial_out_of_gpu_memory_is_requeued_with_twice_its_share_and_later_trials_get_it(packer, tmp_path):
    packer, probes = packer
    assert packer.resources({LR: 1e-4, QUERIES: 100, LAYERS: 4}).required_resources["GPU"] == 0.3125
    trial = fake_trial(tmp_path, "torch.OutOfMemoryError: CUDA out of memory.", 0.3125)
    packer.on_trial_recover(0, [trial], trial)
    assert trial.placement_group_factory.required_resources == {"CPU": 2.0, "GPU": 0.625}
    assert packer.resources({LR: 5e-4, QUERIES: 100, LAYERS: 4}).required_resources["GPU"] == 0.625
    assert len(probes) == 1


def test_a_trial_that_failed_for_another_reason_keeps_its_share(packer, tmp_path):
    packer, _ = packer
    trial = fake_trial(tmp_path, "RuntimeError: worker died", 0.1875)
    packer.on_trial_recover(0, [trial], trial)
    assert trial.placement_group_factory.required_resources["GPU"] == 0.1875


def test_auto_on_a_machine_without_gpus_means_no_gpu_with_a_log_line(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    spec = load_spec(None, ["automl.resources_per_trial={cpu: 2, gpu: auto}"])
    space = space_from_mapping({LR: {}}, spec, "test")
    with caplog.at_level("INFO", logger="automl.packing"):
        assert gpu_packer(spec, space, tmp_path, "sweep") is None
    assert "gpu: auto on a machine without GPUs: every trial runs on CPU" in caplog.text
    assert dict(without_auto_gpu(spec).automl.resources_per_trial) == {"cpu": 2}


def test_auto_with_multi_gpu_trials_is_refused():
    spec = load_spec(None, ["automl.resources_per_trial={gpu: auto}", "train.num_gpus=2"])
    with pytest.raises(UserError, match="automl.resources_per_trial.gpu: auto packs several trials on one GPU, but train.num_gpus = 2"):
        gpu_packer(spec, space_from_mapping({LR: {}}, spec, "test"), None, "sweep")


def test_an_amount_that_is_neither_a_number_nor_auto_is_refused():
    with pytest.raises(UserError, match=r"automl.resources_per_trial.gpu: expected a number \(or gpu: auto\), got 'lots'"):
        without_auto_gpu(load_spec(None, ["automl.resources_per_trial={gpu: lots}"]))
    spec = load_spec(None, ["automl.resources_per_trial={cpu: 2, gpu: 0.5}"])
    assert without_auto_gpu(spec) is spec


def test_a_failed_probe_gives_every_trial_a_whole_gpu(packer, monkeypatch):
    packer, _ = packer

    def failing_probe(base_spec, config):
        raise RuntimeError("GPU memory probe failed: CUDA out of memory")

    monkeypatch.setattr(packing, "probe_peak_memory", failing_probe)
    assert packer.resources({LR: 1e-4, QUERIES: 200, LAYERS: 9}).required_resources["GPU"] == 1.0


def test_the_probe_runs_a_few_training_steps_of_the_sampled_config_in_a_subprocess(smoke_spec):
    from omegaconf import OmegaConf

    spec = smoke_spec()
    # On CPU the peak is 0 bytes; what matters here is that the probe's training runs to the end.
    assert packing.probe_peak_memory(OmegaConf.to_container(spec, resolve=True), {QUERIES: 8, LR: 1e-4}) == 0


def test_a_failed_probe_is_one_line_naming_its_error(smoke_spec):
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(smoke_spec(), resolve=True)
    with pytest.raises(RuntimeError) as failure:
        packing.probe_peak_memory(spec, {"model.mask_former.no_such_key": 1})
    message = str(failure.value)
    assert "\n" not in message and message.startswith("GPU memory probe failed (") and "no_such_key" in message


def test_the_probe_is_capped_and_retried_under_a_larger_cap_after_running_out_of_memory(monkeypatch):
    caps = []

    def probe_process(command, **kwargs):  # out of memory under a quarter of the GPU, fits in half
        request = json.loads(open(command[-1]).read())
        caps.append(request["cap"])
        if request["cap"] < 0.5:
            return SimpleNamespace(returncode=1, stderr="Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 33.26 GiB\n")
        with open(f"{request['out']}/peak.json", "w") as peak:
            json.dump({"allocated": 7 * GIB, "reserved": 8 * GIB}, peak)
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(packing.subprocess, "run", probe_process)
    assert packing.probe_peak_memory({}, {QUERIES: 100}) == 8 * GIB
    assert caps == [0.25, 0.5]


def test_a_probe_that_fails_for_another_reason_is_not_retried(monkeypatch):
    calls = []
    monkeypatch.setattr(packing.subprocess, "run", lambda *a, **k: calls.append(1) or SimpleNamespace(returncode=1, stderr="KeyError: 'no_such_key'"))
    with pytest.raises(RuntimeError, match="no_such_key"):
        packing.probe_peak_memory({}, {QUERIES: 100})
    assert len(calls) == 1


def test_an_interrupted_probe_gives_a_whole_gpu_and_keeps_no_share(tmp_path, monkeypatch):
    space = space_from_mapping({QUERIES: {"options": [100, 200]}}, load_spec(None), "test")
    packer = GpuPacker({}, space, tmp_path / "sweep.gpu_shares.json", cpu=2.0, total_bytes=H100)

    def interrupted(*args, **kwargs):  # Ctrl-C reaches the probe's process group too
        return SimpleNamespace(returncode=-2, stderr="")

    monkeypatch.setattr(packing.subprocess, "run", interrupted)
    assert packer.resources({QUERIES: 200}).required_resources["GPU"] == 1.0
    assert not (tmp_path / "sweep.gpu_shares.json").exists()  # the next sweep probes again
