"""benchmarks/memory_history.py's replay of an allocation history, on a hand-made one."""

from benchmarks.memory_history import blocks_at_peak, origin, summarise

GIB = 2**30


def frame(filename, line, name):
    return {"filename": filename, "line": line, "name": name}


CONV = [frame("/usr/lib/torch/nn/modules/conv.py", 540, "_conv_forward"), frame("/repo/model/pixel_decoder.py", 191, "forward"),
        frame("/repo/model/mask2former.py", 51, "forward")]  # fmt: skip
SWIN = [frame("/repo/model/swin.py", 114, "forward")]


def test_the_blocks_alive_at_the_largest_total_are_found_and_grouped_by_their_own_frames():
    trace = [
        {"action": "alloc", "addr": 1, "size": 2 * GIB, "frames": SWIN},
        {"action": "alloc", "addr": 2, "size": 1 * GIB, "frames": SWIN},
        {"action": "free_requested", "addr": 2, "size": 1 * GIB},
        {"action": "free_completed", "addr": 2, "size": 1 * GIB},
        {"action": "alloc", "addr": 3, "size": 5 * GIB, "frames": CONV},  # the peak: 2 + 5
        {"action": "free_completed", "addr": 3, "size": 5 * GIB},
        {"action": "alloc", "addr": 4, "size": 3 * GIB, "frames": SWIN},  # 5 in all: below the peak
    ]
    peak, blocks = blocks_at_peak(trace)
    assert peak == 7 * GIB and sorted(b["addr"] for b in blocks) == [1, 3]
    summary = summarise(blocks, top=5)
    assert summary["groups"][0] == {"gib": 5.0, "blocks": 1, "origin": "pixel_decoder.py:191:forward <- mask2former.py:51:forward"}
    assert summary["largest"][1] == {"gib": 2.0, "origin": "swin.py:114:forward"}


def test_an_allocation_with_no_frame_of_interest_names_its_innermost_frames():
    assert origin([frame("/x/lightning/loop.py", 10, "run")]) == "loop.py:10:run"
