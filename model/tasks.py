"""The three segmentation tasks one Mask2Former network serves; they differ in targets, post-processing and metrics."""

from model.errors import ArgumentError

TASKS = ("panoptic", "instance", "semantic")


def check_task(task: str) -> None:
    """Raise an ArgumentError('task') unless `task` is one of TASKS."""
    if task not in TASKS:
        raise ArgumentError("task", f"{task!r}; expected one of {list(TASKS)}")
