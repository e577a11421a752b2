"""Frozen encode throughput on the CPU: the plain PyTorch encoder (engine "torch", the path before execution
engines) vs the "fused" (conv+BN folded, channels_last) and "openvino" engines, side by side in one run.

For each input size: ``encoder.encode`` of a batch of uint8 frames (MobileNetV2, S2 (1, 2): five tiles per
image), cases interleaved over the repeats, best of the repeats (the least disturbed on a shared host), in wall
time and in process CPU time (less sensitive to other jobs). Also the largest token difference to the "torch"
engine, and the trunk alone on the same five tiles per image (no resize, split, stitch or pooling) for reference.

    python benchmarks/bench_encode.py [--sizes 96,224] [--batch 8] [--threads 1] [--compile]

``--compile`` adds ``torch.compile`` (inductor, freezing) of the fused trunk inside the same S2 path, with its
compile time (not a shipped engine: it is measured to show whether it would pay).
"""

from __future__ import annotations

import argparse
import os
import time


def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="mobilenet_v2")
    ap.add_argument("--sizes", default="96,224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    from s2robot.encoders import build_encoder
    from s2robot.encoders.engine import EngineRunner, openvino_available
    from s2robot.s2 import s2_forward, split_tiles

    torch.set_num_threads(args.threads)
    engines = ["torch", "fused"] + (["openvino"] if openvino_available() else [])
    print(f"# bench_encode  encoder={args.encoder} scales=(1, 2) batch={args.batch} threads={args.threads} "
          f"torch {torch.__version__}  openvino {'yes' if 'openvino' in engines else 'not installed'}  "
          f"load {os.getloadavg()[0]:.2f}")
    for size in (int(s) for s in args.sizes.split(",")):
        encs = {e: build_encoder(args.encoder, scales=(1, 2), input_size=size, engine=e) for e in engines}
        raw = torch.randint(0, 256, (args.batch, size, size, 3), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
        cases = {e: (lambda enc=enc: enc.encode(raw)) for e, enc in encs.items()}
        ref_enc = encs["torch"]
        pre = ref_enc.preprocess(raw).contiguous()
        big = torch.nn.functional.interpolate(pre, scale_factor=2, mode="bicubic", align_corners=False)
        tiles = torch.cat([pre, split_tiles(big, 2, 2)])  # the 5 tiles per image S2 feeds the trunk
        cases["trunk only, torch"] = lambda: ref_enc.adapter(tiles)
        if "openvino" in encs:
            runner = EngineRunner(ref_enc.adapter, "openvino")
            cases["trunk only, openvino"] = lambda: runner(tiles)
        compile_s = None
        with torch.inference_mode():
            ref = ref_enc.encode(raw)
            diffs = {e: (enc.encode(raw) - ref).abs().max().item() for e, enc in encs.items()}
            if args.compile:
                import copy

                import torch._inductor.config as inductor_config

                from s2robot.encoders.engine import _fuse

                inductor_config.freezing = True
                compiled = torch.compile(_fuse(copy.deepcopy(ref_enc.adapter)))
                run = lambda x: compiled(x.contiguous(memory_format=torch.channels_last))  # noqa: E731
                prep = lambda: ref_enc.preprocess(raw).contiguous()  # noqa: E731
                compile_s = _timed(lambda: s2_forward(run, prep(), scales=(1, 2), batch_scales=True))[0]
                cases["torch.compile (fused)"] = lambda: s2_forward(run, prep(), scales=(1, 2), batch_scales=True)
            for fn in cases.values():  # warm-up: engines build on first use
                fn()
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
            for _ in range(args.repeats):
                for k, fn in cases.items():
                    times[k].append(_timed(fn))
        wall = {k: min(t[0] for t in v) for k, v in times.items()}
        cpu = {k: min(t[1] for t in v) for k, v in times.items()}
        print(f"\n## {size} px, tokens {tuple(ref.shape[1:])}\n| path | images/s (wall) | images/s (CPU time) | "
              f"vs torch (wall / CPU) | max token diff |\n|---|---|---|---|---|")
        for k in cases:
            diff = f"{diffs[k]:.1e}" if k in diffs else "-"
            print(f"| {k} | {args.batch / wall[k]:.1f} | {args.batch / cpu[k]:.1f} | "
                  f"{wall['torch'] / wall[k]:.2f}x / {cpu['torch'] / cpu[k]:.2f}x | {diff} |")
        if compile_s is not None:
            print(f"torch.compile: first call (compile) {compile_s:.1f} s")
    print(f"\nload after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
