"""Atomic writes: a failed write leaves the previous file and no temporary; JSON never holds bare NaN."""

import json

import pytest

from automl.files import atomic_write, replace_symlink, write_json


def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "best.json"
    target.write_text("previous")
    with pytest.raises(OSError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["best.json"]


def test_json_writes_nan_and_infinities_as_null(tmp_path):
    write_json(tmp_path / "best.json", {"metrics": {"PQ": 41.5, "APl": float("nan")}, "values": [float("inf")]})
    assert json.loads((tmp_path / "best.json").read_text()) == {"metrics": {"PQ": 41.5, "APl": None}, "values": [None]}


def test_a_link_is_replaced_in_place_and_stays_relative(tmp_path):
    for name in ("a.pth", "b.pth"):
        (tmp_path / name).write_text(name)
    link = tmp_path / "latest.pth"
    replace_symlink(tmp_path / "a.pth", link)
    replace_symlink(tmp_path / "b.pth", link)
    assert link.read_text() == "b.pth" and str(link.readlink()) == "b.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth", "latest.pth"]
