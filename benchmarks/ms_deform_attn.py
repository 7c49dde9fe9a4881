"""Deformable-attention kernel benchmark: the Triton kernel against the grid_sample reference.

At the pixel decoder's shapes (Swin-T at 1024 x 1024, batch 2: levels 32x32, 64x64, 128x128,
8 heads of 32 channels, 4 points, every pixel a query) it times forward and forward+backward
of both paths in float32 and bfloat16 values (float32 locations and weights) with
`triton.testing.do_bench` (CUDA events, median), checks that both agree (relative error of
the fused output against the float64 reference), prints a table and writes JSON.

    python benchmarks/ms_deform_attn.py --out benchmarks/results/ms_deform_attn.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import write_json  # noqa: E402
from model.ms_deform_attn import ms_deform_attn_reference  # noqa: E402
from model.ms_deform_attn_triton import ms_deform_attn_triton  # noqa: E402


def inputs(args: argparse.Namespace, dtype: torch.dtype) -> tuple[list[tuple[int, int]], list[torch.Tensor]]:
    stride_sizes = [args.size // s for s in (32, 16, 8)]
    shapes = [(s, s) for s in stride_sizes]
    seq = sum(h * w for h, w in shapes)
    value = torch.randn(args.batch, seq, args.heads, args.head_dim, device="cuda").to(dtype)
    locations = torch.rand(args.batch, seq, args.heads, len(shapes), args.points, 2, device="cuda") * 1.1 - 0.05
    weights = torch.randn(args.batch, seq, args.heads, len(shapes) * args.points, device="cuda").softmax(-1)
    return shapes, [value, locations, weights.view(*weights.shape[:3], len(shapes), args.points)]


def bench(fn, grad_out: torch.Tensor | None, tensors: Sequence[torch.Tensor]) -> float:
    import triton.testing

    if grad_out is None:
        with torch.no_grad():
            return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")

    def step():
        for t in tensors:
            t.grad = None
        fn().backward(grad_out)

    return triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024, help="image side; levels are size/32, /16, /8")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ms_deform_attn.json"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        shapes, (value, locations, weights) = inputs(args, dtype)
        expected = ms_deform_attn_reference(value.double(), shapes, locations.double(), weights.double())
        error = ((ms_deform_attn_triton(value, shapes, locations, weights).double() - expected).norm() / expected.norm()).item()
        leaves = [t.requires_grad_() for t in (value, locations, weights)]
        grad_out = torch.randn(expected.shape, device="cuda").to(dtype)
        # the reference's grid_sample needs one dtype: it gets the locations and weights in value's dtype
        reference = lambda: ms_deform_attn_reference(value, shapes, locations.to(dtype), weights.to(dtype))  # noqa: E731
        fused = lambda: ms_deform_attn_triton(value, shapes, locations, weights)  # noqa: E731
        for direction, go in (("forward", None), ("forward+backward", grad_out)):
            ref_ms, fused_ms = bench(reference, go, leaves), bench(fused, go, leaves)
            rows.append({"dtype": str(dtype).removeprefix("torch."), "pass": direction, "reference_ms": ref_ms,
                         "fused_ms": fused_ms, "speedup": ref_ms / fused_ms, "fused_rel_error": error})
    print(f"{torch.cuda.get_device_name()}: shapes {shapes}, batch {args.batch}, heads {args.heads}x{args.head_dim}, points {args.points}")
    print(f"{'dtype':<9}{'pass':<18}{'reference ms':>13}{'fused ms':>10}{'speedup':>9}{'rel err':>10}")
    for r in rows:
        print(f"{r['dtype']:<9}{r['pass']:<18}{r['reference_ms']:>13.3f}{r['fused_ms']:>10.3f}{r['speedup']:>9.1f}{r['fused_rel_error']:>10.1e}")
    result = {"benchmark": "ms_deform_attn", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "args": vars(args), "shapes": shapes, "results": rows}
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
