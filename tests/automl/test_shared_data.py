"""A sweep's trials train on the data the driver decoded once, and decode their own when their values name other data."""

import pickle
import shutil
from pathlib import Path

from automl.shared_data import decode_data
from automl.training import build_label_map, run_training
from tests.conftest import SMOKE_SPEC, data_overrides


def test_a_trial_trains_on_the_shared_decoded_data_without_reading_the_annotation_files(synthetic_data, tmp_path):
    from automl.spec import load_spec

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    spec = load_spec(SMOKE_SPEC, [*data_overrides(data), f"results_dir={tmp_path / 'results'}", "train.num_epochs=1", "train.iters_per_epoch=2"], action="train")
    # What the trials receive went through the object store: a pickled copy, not the driver's objects.
    shared = pickle.loads(pickle.dumps(decode_data(spec, build_label_map(spec))))
    assert [len(shared.readers[split].images) for split in ("train", "val")] == [18, 6]
    for name in ("label_map.json", "train/annotations_panoptic.json", "val/annotations_panoptic.json"):
        (data / name).unlink()  # a trial that read them would fail
    result = run_training(spec, progress=False, keep_checkpoints=False, data=shared)
    assert result.metrics["PQ"] == result.metrics["PQ"]  # validated on the shared validation index


def test_shared_data_fits_only_a_spec_naming_the_same_files(smoke_spec, tmp_path):
    spec = smoke_spec()
    shared = decode_data(spec, build_label_map(spec))
    assert shared.fits(smoke_spec("train.optim.lr=0.001", "dataset.train.batch_size=2", "dataset.augmentation.train_crop_size=[96,96]"))
    other = tmp_path / "other.json"
    other.write_text(Path(spec.dataset.train.panoptic_json).read_text())
    assert not shared.fits(smoke_spec(f"dataset.train.panoptic_json={other}"))
    assert not shared.fits(smoke_spec("dataset.contiguous_id=false"))
