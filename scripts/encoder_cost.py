"""What a frozen S2 encoder costs per camera frame: tokens, GFLOPs, and encode time on this CPU.

    OMP_NUM_THREADS=1 python scripts/encoder_cost.py \\
        --encoders mobilenet_v2 efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 \\
        --scales 1 1,2 --input-sizes 96

Every combination of encoder x scales x input size is one row. Columns: tokens per frame (N x D and their
product, the floats a frame adds to the feature cache), GFLOPs per frame (``torch.utils.flop_counter.FlopCounterMode``
over one frame's ``encode`` with the reference ``torch`` engine: 2 FLOPs per multiply-accumulate, convolutions and
matrix products only), and ms per frame: the median over ``--runs`` timed ``encode`` calls of ``--batch`` uint8
frames already at the input size (after 2 warm-up calls), with the encoder's default engine, ``--threads`` torch
threads. The header names the CPU, threads and 1-minute load average: timings on a shared machine move with it.
``--resnet-baseline`` adds the trainable ResNet-18 baseline's row (``policy.obs.backbone=resnet18`` with the
conditioning defaults: robomimic ResNet18Conv + spatial softmax, centre crop at evaluation; scales "-"), timed in
eval mode with plain PyTorch (it is trained, so it has no engine).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time

import torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales must be comma-separated numbers like 1,2, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return tuple(int(v) if v.is_integer() else v for v in values)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _ms_per_frame(encode, frames: torch.Tensor, runs: int) -> str:
    """Median ms per frame over ``runs`` timed ``encode(frames)`` calls, after 2 warm-up calls (they build an
    engine's compiled form and fill allocator caches)."""
    for _ in range(2):
        encode(frames)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        encode(frames)
        times.append(time.perf_counter() - start)
    return f"{1e3 * statistics.median(times) / len(frames):.2f}"


def measure(name: str, scales: tuple, input_size: int, batch: int, runs: int) -> dict:
    """One row: tokens, GFLOPs per frame, median encode ms per frame (default engine) for one configuration."""
    from torch.utils.flop_counter import FlopCounterMode

    from s2robot.encoders import build_encoder

    enc = build_encoder(name, scales=scales, input_size=input_size)
    reference = build_encoder(name, scales=scales, input_size=input_size, engine="torch")
    frames = torch.randint(0, 256, (batch, input_size, input_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        reference.encode(frames[:1])
    return {
        "encoder": name, "scales": ",".join(str(s) for s in scales), "input": input_size,
        "tokens": f"{enc.num_tokens}x{enc.out_dim}", "floats/frame": enc.num_tokens * enc.out_dim,
        "GFLOPs/frame": f"{counter.get_total_flops() / 1e9:.3f}",
        "ms/frame": _ms_per_frame(enc.encode, frames, runs), "engine": enc.engine_in_use,
    }


def measure_resnet_baseline(input_size: int, batch: int, runs: int) -> dict:
    """The trainable ResNet-18 baseline's row, in the columns of :func:`measure` (one feature vector per frame)."""
    from torch.utils.flop_counter import FlopCounterMode

    from s2robot.policies.conditioning import ConditioningConfig
    from s2robot.policies.resnet_baseline import ResNetImageEncoder

    cfg = ConditioningConfig(backbone="resnet18")
    enc = ResNetImageEncoder((input_size, input_size, 3), cfg.d_model, cfg.crop_ratio, cfg.resnet_num_kp,
                             cfg.resnet_gn_group_size).eval()
    frames = torch.randint(0, 256, (batch, input_size, input_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode():
        with counter:
            enc(frames[:1])
        ms = _ms_per_frame(enc, frames, runs)
    return {
        "encoder": "resnet18", "scales": "-", "input": input_size, "tokens": f"1x{cfg.d_model}",
        "floats/frame": cfg.d_model, "GFLOPs/frame": f"{counter.get_total_flops() / 1e9:.3f}",
        "ms/frame": ms, "engine": "torch (trainable)",
    }


def _print(rows: list[dict], fmt: str) -> None:
    cols = list(rows[0])
    if fmt == "csv":  # the csv module quotes the scales column ("1,2")
        writer = csv.DictWriter(sys.stdout, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--encoders", nargs="*", default=["mobilenet_v2", "efficientnet_lite0",
                                                          "efficientnet_lite1", "efficientnet_lite2"],
                        help="encoder names (s2robot.encoders.list_encoders())")
    parser.add_argument("--scales", nargs="+", type=_scales, default=[(1,), (1, 2)],
                        help="S2 scale sets, each comma-separated (default: 1 1,2)")
    parser.add_argument("--input-sizes", nargs="+", type=_positive, default=[96], help="base input sizes (px)")
    parser.add_argument("--batch", type=_positive, default=8, help="frames per timed encode call (default 8)")
    parser.add_argument("--runs", type=_positive, default=5, help="timed calls; the median is reported (default 5)")
    parser.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    parser.add_argument("--resnet-baseline", action="store_true",
                        help="also the trainable ResNet-18 baseline's row (policy.obs.backbone=resnet18)")
    args = parser.parse_args(argv)
    if not args.encoders and not args.resnet_baseline:
        parser.error("nothing to measure: name --encoders or pass --resnet-baseline")

    torch.set_num_threads(args.threads)
    print(f"# {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch}, median of {args.runs}, load average {os.getloadavg()[0]:.2f}")
    rows = []
    try:
        for name in args.encoders:
            for scales in args.scales:
                for size in args.input_sizes:
                    rows.append(measure(name, scales, size, args.batch, args.runs))
        if args.resnet_baseline:
            rows.extend(measure_resnet_baseline(size, args.batch, args.runs) for size in args.input_sizes)
    except (ValueError, FileNotFoundError) as e:
        print(f"encoder_cost: error: {e}", file=sys.stderr)
        return 2
    _print(rows, args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
