"""Train-step and inference benchmark: our Mask2Former against transformers' at the same config.

Both networks are built at random initialisation from one architecture (Swin-T, 133 classes,
100 queries by default) written in Hugging Face's config vocabulary; ours is derived from it by
the project's own converter (`model.convert.hf`), so the two cannot drift apart. For each
precision it times, side by side in one process (fp32: strict float32, TF32 off for matmuls and
cuDNN; tf32: float32 with TF32 allowed for both; bf16: autocast bfloat16, PyTorch's default
TF32 settings):

    train: forward + loss + backward + AdamW step on synthetic targets (ours: SetCriterion;
           transformers: the loss it computes from mask_labels/class_labels);
    infer: forward in eval mode under torch.inference_mode.

It prints one table row per (impl, precision, case) with the median step time, images/s,
peak memory and the ours/HF ratios, and writes every number to JSON. With --profile each case
also runs a few steps under torch.profiler and records the CUDA kernel launches per step, the
GPU-busy milliseconds per step (the union of kernel and copy intervals) and the top kernels. A case that fails
(e.g. out of memory) is recorded with its error and the run goes on. Nothing is asserted
about speed: machines are noisy, so compare the ratios of one run.

    python benchmarks/train_step.py                      # H100 defaults: 1024x1024 x2, 800x1216 x1
    python benchmarks/train_step.py --device cpu --tiny --size 64 --infer-size 64 96 --steps 1 --warmup 1
    python benchmarks/train_step.py --only ours --precision bf16 --cases train --profile
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: `model` is the repo's package
    sys.path.insert(0, str(ROOT))

from benchmarks._common import profile_summary, write_json  # noqa: E402
from model import build_mask2former  # noqa: E402
from model.convert import mask2former_kwargs  # noqa: E402  (the tested HF -> ours mapping)
from model.criterion import SetCriterion  # noqa: E402
from model.cuda_graph import GraphedInference, GraphedTraining  # noqa: E402
from model.matcher import HungarianMatcher  # noqa: E402

IMPLS = ("ours", "hf")
PRECISIONS = ("fp32", "tf32", "bf16")
CASES = ("train", "infer")
SWIN_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def hf_config_dict(tiny: bool = False, num_points: int | None = None) -> dict[str, Any]:
    """The benchmarked architecture as Mask2FormerConfig keyword arguments (Swin-T COCO panoptic
    recipe: drop path 0.3, 6 encoder layers, 10 decoder predictions); `tiny` shrinks every width
    and depth for a CPU smoke run."""
    if tiny:
        swin = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4])
        head = dict(feature_size=32, mask_feature_size=32, hidden_dim=32, dim_feedforward=64, num_attention_heads=4,
                    encoder_layers=1, decoder_layers=3, num_queries=8, train_num_points=256)
        num_classes = 5
    else:
        swin = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24])
        head = dict(feature_size=256, mask_feature_size=256, hidden_dim=256, dim_feedforward=2048, num_attention_heads=8,
                    encoder_layers=6, decoder_layers=10, num_queries=100, train_num_points=12544)
        num_classes = 133
    if num_points is not None:
        head["train_num_points"] = num_points
    return dict(
        backbone_config=dict(model_type="swin", image_size=224, window_size=7, drop_path_rate=0.3, out_features=SWIN_STAGES, **swin),
        id2label={i: f"class_{i}" for i in range(num_classes)},
        dropout=0.0, oversample_ratio=3.0, importance_sample_ratio=0.75,
        class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
        **head,
    )


def build_ours(config: dict[str, Any], fpn_autocast: bool = False) -> tuple[torch.nn.Module, SetCriterion]:
    """Our network and criterion for the architecture `config` describes (`fpn_autocast`: model.sem_seg_head.fpn_autocast)."""
    kwargs = mask2former_kwargs(config, "benchmark config")
    c = config  # the loss settings, in HF's names
    matcher = HungarianMatcher(cost_class=c["class_weight"], cost_mask=c["mask_weight"], cost_dice=c["dice_weight"], num_points=c["train_num_points"])
    criterion = SetCriterion(
        kwargs["num_classes"], matcher, class_weight=c["class_weight"], mask_weight=c["mask_weight"], dice_weight=c["dice_weight"],
        no_object_weight=c["no_object_weight"], num_points=c["train_num_points"], oversample_ratio=c["oversample_ratio"],
        importance_sample_ratio=c["importance_sample_ratio"], deep_supervision=True,
    )
    return build_mask2former(**kwargs, fpn_autocast=fpn_autocast), criterion


def build_hf(config: dict[str, Any]) -> torch.nn.Module:
    """transformers' Mask2FormerForUniversalSegmentation, randomly initialised from `config` (offline)."""
    import transformers

    return transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(**config))


def synthetic_targets(batch: int, size: tuple[int, int], num_masks: int, num_classes: int, device: torch.device, seed: int = 0) -> list[dict]:
    """Per image `num_masks` random rectangles as bool masks (N, H, W) and labels (N,) in 0..K-1."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    targets = []
    for _ in range(batch):
        masks = torch.zeros(num_masks, h, w, dtype=torch.bool)
        for m in masks:
            y0, x0 = (int(torch.randint(0, s - s // 8, (1,), generator=g)) for s in (h, w))
            y1 = y0 + 1 + int(torch.randint(max(h // 8, 1), max(h // 2, 2), (1,), generator=g))
            x1 = x0 + 1 + int(torch.randint(max(w // 8, 1), max(w // 2, 2), (1,), generator=g))
            m[y0:y1, x0:x1] = True
        labels = torch.randint(0, num_classes, (num_masks,), generator=g)
        targets.append({"masks": masks.to(device), "labels": labels.to(device)})
    return targets


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _tf32(precision: str):
    """TF32 off (fp32), on (tf32) or PyTorch's defaults (bf16) for the case, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if precision in ("fp32", "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_step(
    impl: str, case: str, precision: str, config: dict, images: torch.Tensor, targets: list[dict], lr: float,
    compile_model: bool = False, cuda_graph: bool = False, fpn_autocast: bool = False,
) -> tuple[Callable[[], torch.Tensor | None], int]:
    """The step to time (it returns the detached loss, None for inference) and the network's parameter count.
    bf16 training runs under autocast; bf16 inference casts the weights and images once.
    `compile_model` wraps the network (not the loss) in torch.compile's default mode; `cuda_graph`
    replays our network as CUDA graphs as the platform does (model.cuda_graph): the inference
    forward, and the training forward and backward (the matcher, losses and optimiser stay eager)."""
    device = images.device
    torch.manual_seed(0)
    if impl == "ours":
        model, criterion = build_ours(config, fpn_autocast)
        criterion = criterion.to(device)
    else:
        model = build_hf(config)
        mask_labels = [t["masks"].float() for t in targets]  # as transformers' image processor gives them
        class_labels = [t["labels"] for t in targets]
    model = model.to(device)
    num_params = sum(p.numel() for p in model.parameters())

    if case == "infer":
        model.eval()
        if precision == "bf16":  # weights cast once rather than by autocast at every op
            model, images = model.to(torch.bfloat16), images.to(torch.bfloat16)
        if compile_model:
            model = torch.compile(model)
        network = GraphedInference(model) if cuda_graph and impl == "ours" else model

        def step() -> None:
            with torch.inference_mode():
                network(images) if impl == "ours" else model(pixel_values=images)

        return step, num_params

    model.train()
    if compile_model:
        model = torch.compile(model)
    network = GraphedTraining(model) if cuda_graph and impl == "ours" else model
    # the same optimiser for both, as the platform trains (PyTorch's default foreach update)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)

    def step() -> torch.Tensor:
        with _autocast(device, precision):
            if impl == "ours":
                loss = criterion.total_loss(criterion(network(images), targets))
            else:
                loss = model(pixel_values=images, mask_labels=mask_labels, class_labels=class_labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, num_params


def _with_precision(step: Callable[[], torch.Tensor | None], precision: str) -> Callable[[], torch.Tensor | None]:
    def wrapped() -> torch.Tensor | None:
        with _tf32(precision):
            return step()

    return wrapped


def profile_steps(step: Callable[[], Any], device: torch.device, steps: int, top: int = 12) -> dict[str, Any]:
    """Run `steps` steps under torch.profiler and summarise them (benchmarks._common.profile_summary)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        wall = time.perf_counter() - t0
    return profile_summary(prof, steps, wall, top)


def run_case(impl: str, case: str, precision: str, args: argparse.Namespace, config: dict, device: torch.device) -> dict[str, Any]:
    """Warm up, then time `args.steps` steps of one case; errors are recorded, not raised."""
    batch, size = (args.batch, (args.size, args.size)) if case == "train" else (1, tuple(args.infer_size))
    row: dict[str, Any] = {"impl": impl, "precision": precision, "case": case, "batch": batch, "height": size[0], "width": size[1]}
    _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        g = torch.Generator().manual_seed(1)
        images = torch.randn(batch, 3, *size, generator=g).to(device)
        targets = synthetic_targets(batch, size, args.num_masks, len(config["id2label"]), device) if case == "train" else []
        step, row["num_params"] = make_step(impl, case, precision, config, images, targets, args.lr, args.compile, args.cuda_graph, args.fpn_autocast)
        step = _with_precision(step, precision)
        if device.type == "cuda":
            row["model_mem_mib"] = torch.cuda.memory_allocated(device) / 2**20
        loss = None
        for i in range(args.warmup):
            t0 = time.perf_counter()
            loss = step()
            if i == 0:  # compilation, autotuning and cuDNN plans happen here
                _sync(device)
                row["first_step_s"] = time.perf_counter() - t0
        times, started = [], time.perf_counter()
        while len(times) < args.steps:
            _sync(device)
            t0 = time.perf_counter()
            loss = step()
            _sync(device)
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - started > args.case_budget_s and len(times) >= min(3, args.steps):
                break  # keep the whole run inside its time limit; steps_timed says how many
        loss = float(loss) if loss is not None else float("nan")
        if args.profile:
            row["profile"] = profile_steps(step, device, args.profile_steps)
    except Exception as exc:  # an OOM or an unsupported op in one case must not end the run
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc).strip()[:1000]}", traceback=traceback.format_exc(limit=8)[-3000:])
    else:
        median = statistics.median(times)
        row.update(
            status="ok",
            steps_timed=len(times),
            median_ms=median * 1e3,
            mean_ms=statistics.fmean(times) * 1e3,
            min_ms=min(times) * 1e3,
            times_ms=[t * 1e3 for t in times],
            images_per_s=batch / median,
            loss=loss if case == "train" else None,
        )
    if device.type == "cuda":
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    step = images = targets = None  # noqa: F841  (drop the case's model and optimizer before the next)
    _free(device)
    return row


def ratios(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """ours / hf of the median time and the peak memory, per (precision, case) where both ran."""
    ok = {(r["impl"], r["precision"], r["case"]): r for r in rows if r.get("status") == "ok"}
    out = []
    for precision in PRECISIONS:
        for case in CASES:
            ours, hf = ok.get(("ours", precision, case)), ok.get(("hf", precision, case))
            if ours and hf:
                mem = ours.get("peak_mem_mib"), hf.get("peak_mem_mib")
                out.append({
                    "precision": precision,
                    "case": case,
                    "time_ratio": ours["median_ms"] / hf["median_ms"],
                    "memory_ratio": mem[0] / mem[1] if mem[0] and mem[1] else None,
                })
    return out


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_mib=props.total_memory / 2**20, capability=f"{props.major}.{props.minor}")
    return env


def print_table(rows: Sequence[dict], ratio_rows: Sequence[dict]) -> None:
    """One row per (impl, precision, case); the ratio columns sit on the ours rows."""
    by_key = {(r["precision"], r["case"]): r for r in ratio_rows}
    header = ["impl", "precision", "case", "input", "median ms", "images/s", "peak MiB", "time ours/HF", "mem ours/HF", "status"]

    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    lines = []
    for r in rows:
        ratio = by_key.get((r["precision"], r["case"])) if r["impl"] == "ours" else None
        lines.append([
            r["impl"], r["precision"], r["case"], f"{r['batch']}x{r['height']}x{r['width']}",
            fmt(r.get("median_ms"), ".1f"), fmt(r.get("images_per_s"), ".2f"), fmt(r.get("peak_mem_mib"), ".0f"),
            fmt(ratio and ratio["time_ratio"], ".2f"), fmt(ratio and ratio["memory_ratio"], ".2f"),
            "ok" if r["status"] == "ok" else r["error"][:60],
        ])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
        for line in [header, *lines]:
            print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
        return
    table = Table(title="Mask2Former: ours vs transformers")
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if 4 <= i <= 8 else "left")
    for line in lines:
        table.add_row(*line)
    Console(width=160).print(table)


def print_profiles(rows: Sequence[dict]) -> None:
    """Per profiled case: launches, copies, GPU-busy vs wall ms per step and the top kernels."""
    for r in rows:
        prof = r.get("profile")
        if not prof:
            continue
        print(
            f"\n{r['impl']} {r['precision']} {r['case']}: {prof['kernels_per_step']:.0f} kernels/step "
            f"({prof['copy_kernels_per_step']:.0f} copies), GPU busy {prof['gpu_busy_ms_per_step']:.1f} of "
            f"{prof['wall_ms_per_step']:.1f} ms"
        )
        for k in prof["top_kernels"][:8]:
            print(f"  {k['ms_per_step']:7.2f} ms {k['calls_per_step']:6.0f}x  {k['name'][:100]}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per case before timing")
    p.add_argument("--size", type=int, default=1024, help="training images are size x size")
    p.add_argument("--batch", type=int, default=2, help="training batch size")
    p.add_argument("--infer-size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"), help="inference image size (batch 1)")
    p.add_argument("--num-masks", type=int, default=10, help="synthetic instance masks per training image")
    p.add_argument("--num-points", type=int, default=None, help="points per mask for matching and losses (12544; 256 with --tiny)")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--only", choices=IMPLS, default=None, help="benchmark one implementation only")
    p.add_argument("--tiny", action="store_true", help="a tiny network (CPU smoke run)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks (default mode); first_step_s includes the compile time")
    p.add_argument("--cuda-graph", action="store_true", help="ours: capture the inference step, and the training forward + backward, as CUDA graphs")
    p.add_argument("--fpn-autocast", action="store_true", help="ours: the FPN convolutions under autocast (model.sem_seg_head.fpn_autocast)")
    p.add_argument("--profile", action="store_true", help="also profile each case: kernel launches, GPU-busy ms, top kernels")
    p.add_argument("--profile-steps", type=int, default=3, help="steps recorded by --profile")
    p.add_argument("--case-budget-s", type=float, default=15.0, help="stop timing a case after this many seconds (at least 3 steps are timed)")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmark_train_step.json"), help="JSON file to write")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns what was written."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; pass --device cpu for a smoke run")
    config = hf_config_dict(args.tiny, args.num_points)
    impls = [args.only] if args.only else list(IMPLS)
    env = environment(device)
    print(f"{env.get('gpu', env['device'])}: torch {env['torch']}, transformers {env['transformers']}", flush=True)
    rows = []
    for case in args.cases:
        for precision in args.precision:
            for impl in impls:
                row = run_case(impl, case, precision, args, config, device)
                print(f"{impl:>4} {precision} {case}: " + (f"{row['median_ms']:.1f} ms" if row["status"] == "ok" else row["error"][:200]), flush=True)
                rows.append(row)
    ratio_rows = ratios(rows)
    result = {
        "benchmark": "mask2former_train_step",
        "environment": env,
        "args": vars(args),
        "config": {k: v for k, v in config.items() if k != "id2label"} | {"num_classes": len(config["id2label"])},
        "results": rows,
        "ratios": ratio_rows,
    }
    print_table(rows, ratio_rows)
    print_profiles(rows)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
