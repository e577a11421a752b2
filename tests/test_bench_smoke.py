"""Smoke test of benchmarks/bench_policy.py's cached-token training table on a tiny store, so the benchmark keeps
running when policy configs or the dataset API change (it once read keys the slimmed policy YAMLs no longer hold)."""

from __future__ import annotations

import argparse

import numpy as np
from script_loader import ROOT, load_script


def test_bench_policy_cached_training_table_runs(capsys):
    from s2robot.encoders import build_encoder
    from s2robot.policies.normalizer import Normalizer

    bench = load_script(ROOT / "benchmarks" / "bench_policy.py")
    encoder = build_encoder("mobilenet_v2", input_size=64)  # 2x2 grid: enough tokens for the PCA-256 fit
    rng = np.random.default_rng(0)
    P, A = 9, 7
    norm = Normalizer().fit({"action": rng.normal(size=(50, A)), "proprio": rng.normal(size=(50, P))})
    args = argparse.Namespace(train_batch=4, threads=1, steps=1)
    bench.cached_training_table(args, encoder, norm, ROOT / "configs", 32, P, A, ("front", "wrist"), episodes=3, T=30)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| bc_mlp", "| diffusion_unet"))]
    assert len(rows) == 2, out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2]) > 0 and cells[3].endswith("x**"), row
