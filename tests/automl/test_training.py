"""One training run on CPU: it learns, names its checkpoints, resumes exactly, and is tracked in MLflow."""

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from mlflow.tracking import MlflowClient

from automl.actions.evaluate import evaluate_checkpoint, resolve_checkpoint
from automl.tracking import tracking_uri
from automl.training import BEST_NAME, LATEST_NAME, run_training, train_dir
from model.checkpoint import load_weights, read_checkpoint
from model.errors import UserError
from model.errors import NonFiniteLossError


class Record(pl.Callback):
    """Per optimiser step: (epoch, step, head lr, dataset indices of the batch)."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lr = max(group["lr"] for group in trainer.optimizers[0].param_groups)
        self.steps.append((trainer.current_epoch, trainer.global_step, lr, tuple(batch["indices"])))


class StopAfter(pl.Callback):
    """Ends fit after `epochs` epochs, as an interrupted run would."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_training_lowers_the_loss_and_lifts_train_pq_well_above_an_untrained_model(trained_smoke):
    spec, result, losses = trained_smoke
    assert losses[-1] < 0.6 * losses[0]
    untrained = evaluate_checkpoint(spec, None)
    assert untrained["PQ"] < 5.0
    assert result.metrics["PQ"] > untrained["PQ"] + 25.0
    assert result.metrics["mIoU"] > untrained["mIoU"] + 25.0


def test_checkpoints_are_written_every_interval_named_by_epoch_and_step_with_a_latest_link(trained_smoke):
    spec, result, _ = trained_smoke  # 30 epochs, a checkpoint every 15
    directory = train_dir(spec)
    steps_per_epoch = math.ceil(18 / spec.dataset.train.batch_size)
    names = sorted(p.name for p in directory.glob("model_epoch_*.pth"))
    assert names == [f"model_epoch_014_step_{15 * steps_per_epoch:05d}.pth", f"model_epoch_029_step_{30 * steps_per_epoch:05d}.pth"]
    latest = directory / f"{LATEST_NAME}.pth"
    assert latest.is_symlink() and latest.resolve().name == names[-1]
    checkpoint = read_checkpoint(latest)  # weights_only=True
    assert checkpoint["epoch"] == 29 and checkpoint["global_step"] == 30 * steps_per_epoch
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    assert checkpoint["spec"]["model"]["mask_former"]["hidden_dim"] == spec.model.mask_former.hidden_dim
    assert (directory / f"{BEST_NAME}.pth").exists()


def test_evaluate_reproduces_the_metrics_of_the_last_validation(trained_smoke):
    spec, result, _ = trained_smoke
    metrics = evaluate_checkpoint(spec, "latest")
    for key in ("PQ", "SQ", "RQ", "mIoU", "AP"):
        assert metrics[key] == pytest.approx(result.metrics[key], abs=1e-6), key


def test_checkpoint_best_of_a_plain_run_is_its_best_validation(trained_smoke):
    spec, result, _ = trained_smoke
    assert resolve_checkpoint(spec, "best") == train_dir(spec) / f"{BEST_NAME}.pth"  # no sweep winner in this results_dir
    metrics = evaluate_checkpoint(spec, "best")
    assert metrics["PQ"] == pytest.approx(result.best_metrics["PQ"], abs=1e-6)


def test_mlflow_holds_the_run_with_metrics_and_artifacts(trained_smoke):
    spec, result, _ = trained_smoke
    client = MlflowClient(tracking_uri(spec))
    [run] = client.search_runs([client.get_experiment_by_name("synthetic_smoke").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.optim.lr"] == str(spec.train.optim.lr)
    assert run.data.tags["mode"] == "panoptic" and run.data.tags["backbone"] == "swin_custom"
    pq = client.get_metric_history(run.info.run_id, "val/PQ")
    assert [m.step for m in pq] == [15 * 5, 30 * 5] and pq[-1].value == pytest.approx(result.metrics["PQ"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert {f"checkpoints/{BEST_NAME}.pth", "checkpoints/" + result.latest_checkpoint.name} <= artifacts
    assert client.list_artifacts(run.info.run_id, "spec")
    # per-class scores: an artifact with class names, not hundreds of metrics
    assert not [key for key in run.data.metrics if key.count("/") > 1]
    rows = json.loads(Path(client.download_artifacts(run.info.run_id, "val/per_class.json")).read_text())
    assert {row["name"] for row in rows} == {"circle", "square", "triangle", "sky", "grass", "wall"}


def test_a_rerun_resumes_at_the_right_step_with_the_same_lr_and_batches(smoke_spec):
    spec = smoke_spec("train.num_epochs=3", "train.validation_interval=3")
    straight = Record()
    run_training(spec.copy(), callbacks=[straight], progress=False, keep_checkpoints=False)

    interrupted, resumed = Record(), Record()
    run_training(spec, callbacks=[interrupted, StopAfter(2)], progress=False)
    run_training(spec, callbacks=[resumed], progress=False)  # same results_dir: resumes from latest

    assert interrupted.steps + resumed.steps == straight.steps


def test_resume_mid_epoch_from_a_step_checkpoint(smoke_spec, tmp_path):
    spec = smoke_spec("train.num_epochs=2", "train.validation_interval=2", "train.checkpoint_interval=3", "train.checkpoint_interval_unit=step")
    straight = Record()
    run_training(spec.copy(), callbacks=[straight], progress=False, keep_checkpoints=False)
    first = Record()
    run_training(spec, callbacks=[first, StopAfter(1)], progress=False)
    mid_epoch = train_dir(spec) / "model_epoch_000_step_00003.pth"
    assert mid_epoch.exists()
    spec.train.resume_training_checkpoint_path = str(mid_epoch)
    resumed = Record()
    run_training(spec, callbacks=[resumed], progress=False)
    assert first.steps[:3] + resumed.steps == straight.steps


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(smoke_spec):
    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    next(pl_module.model.parameters()).fill_(float("nan"))

    spec = smoke_spec("train.num_epochs=3", "train.iters_per_epoch=1")
    with pytest.raises(NonFiniteLossError, match="training loss became nan at epoch 1"):
        run_training(spec, callbacks=[Poison()], progress=False)
    latest = train_dir(spec) / f"{LATEST_NAME}.pth"
    assert read_checkpoint(latest)["epoch"] == 0
    state = read_checkpoint(latest)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_pretrained_weights_load_with_a_report_of_skipped_keys(smoke_spec, tmp_path):
    spec = smoke_spec("train.num_epochs=1", "train.iters_per_epoch=1")
    run_training(spec, progress=False)
    from automl.training import build_label_map, build_module

    other = smoke_spec("model.sem_seg_head.num_classes=9", "dataset.contiguous_id=false")
    module = build_module(other, build_label_map(other))
    report = load_weights(module.model, train_dir(spec) / f"{LATEST_NAME}.pth", skip_mismatched=True)
    assert report["mismatched"] == ["transformer_decoder.class_embed.bias", "transformer_decoder.class_embed.weight"]
    assert report["missing"] == [] and report["unexpected"] == []
    with pytest.raises(UserError, match="checkpoint not found"):
        load_weights(module.model, tmp_path / "nope.pth")


def test_a_resumed_run_takes_the_lr_of_its_spec_not_of_the_checkpoint(smoke_spec):
    # What a PBT clone does: continue another trial's checkpoint with mutated values.
    spec = smoke_spec("train.num_epochs=2", "train.validation_interval=2", "train.optim.lr_scheduler=MultiStep", "train.optim.milestones=[]")
    run_training(spec, callbacks=[StopAfter(1)], progress=False)
    spec.train.optim.lr = spec.train.optim.lr / 4
    resumed = Record()
    run_training(spec, callbacks=[resumed], progress=False)
    assert [lr for _, _, lr, _ in resumed.steps] == pytest.approx([spec.train.optim.lr] * len(resumed.steps))


def final_weights(spec):
    return read_checkpoint(train_dir(spec) / f"{LATEST_NAME}.pth")["state_dict"]


def test_a_run_stopped_after_epoch_2_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(smoke_spec, tmp_path):
    # Drop path, point sampling and augmentation all draw random numbers: without the generators'
    # states in the checkpoint the resumed epoch draws others.
    straight = smoke_spec("train.num_epochs=3", "train.validation_interval=3", f"results_dir={tmp_path / 'straight'}")
    run_training(straight, progress=False)
    interrupted = smoke_spec("train.num_epochs=3", "train.validation_interval=3", f"results_dir={tmp_path / 'interrupted'}")
    run_training(interrupted, callbacks=[StopAfter(2)], progress=False)
    run_training(interrupted, progress=False)
    expected, resumed = final_weights(straight), final_weights(interrupted)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_a_rerun_after_a_stop_in_epoch_1_moves_the_latest_link_to_the_newest_checkpoint(smoke_spec):
    spec = smoke_spec("train.num_epochs=2", "train.validation_interval=2")
    run_training(spec, callbacks=[StopAfter(1)], progress=False)  # as a kill during epoch 1 leaves it
    run_training(spec, progress=False)
    directory = train_dir(spec)
    latest = directory / f"{LATEST_NAME}.pth"
    assert latest.is_symlink() and read_checkpoint(latest)["epoch"] == 1
    assert sorted(p.name for p in directory.glob("mask2former_model_*")) == [f"{BEST_NAME}.pth", f"{LATEST_NAME}.pth"]
    assert latest.resolve() == directory / "model_epoch_001_step_00010.pth"  # what checkpoint=latest reads
    spec.train.num_epochs = 3  # the next rerun continues from the newest checkpoint
    resumed = Record()
    run_training(spec, callbacks=[resumed], progress=False)
    assert {epoch for epoch, *_ in resumed.steps} == {2}


def test_the_last_epoch_is_validated_when_num_epochs_is_not_a_multiple_of_the_interval(smoke_spec):
    spec = smoke_spec("train.num_epochs=1", "train.iters_per_epoch=1")  # the smoke spec validates every 5 epochs
    result = run_training(spec, progress=False)
    assert "PQ" in result.metrics and result.best_checkpoint is not None and result.best_checkpoint.exists()


def test_training_in_a_trial_writes_no_lightning_default_checkpoints(smoke_spec):
    spec = smoke_spec("train.num_epochs=1", "train.iters_per_epoch=1")
    run_training(spec, progress=False, keep_checkpoints=False)
    assert not list(train_dir(spec).rglob("*.ckpt"))
