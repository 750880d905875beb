"""The benchmark scripts still run and print their side-by-side tables (tiny inputs; no timings checked)."""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import re
import subprocess
import sys

import torch

from tests.helpers import ROOT, class_folder

REPO = str(ROOT)


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src")}
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bench_decode_prints_ratios(tmp_path):
    class_folder(str(tmp_path), {"a": 3, "b": 3}, size=(120, 90))
    out = _run(
        "bench_decode.py",
        *("--root", str(tmp_path), "--size", "64", "--rounds", "1", "--repeat", "1", "--min-seconds", "0"),
        *("--large", "400x300", "--large-count", "2"),
    )
    rows = [ln for ln in out.splitlines() if re.search(r"\b(eval|train)\s+[\d.]+\s+[\d.]+\s+[\d.]+x", ln)]
    assert len(rows) == 4, out  # photos and large, eval and train: stock, ours, ratio, ...
    assert "libjpeg-turbo region decoding: " in out and "decode_device=cuda" in out


def test_bench_worker_memory_measures_each_side():
    """In-process (the script's own fresh processes per side would cost ~40 s here): tiny index, 2 epochs."""
    spec = importlib.util.spec_from_file_location(
        "bench_worker_memory", os.path.join(REPO, "benchmarks", "bench_worker_memory.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(n=3000, workers=1, epochs=2, batch=500)
    threads, method = torch.get_num_threads(), mp.get_start_method(allow_none=True)
    try:  # measure() sets both for its own process: put them back for the tests that follow
        for kind in ("list", "vit-ft"):
            res = bench.measure(kind, args)
            assert res["index_mib"] > 0 and len(res["epochs"]) == 2
            assert all(e["tree"] > 0 and e["private"] > 0 and e["minflt"] > 0 for e in res["epochs"])
    finally:
        torch.set_num_threads(threads)
        mp.set_start_method(method, force=True)


def test_bench_eval_metrics_prints_old_new_and_ratio():
    out = _run(
        "bench_eval_metrics.py",
        *("--classes", "20", "--images", "200", "--batch", "50", "--rounds", "1"),
        *(
            "--model",
            "vit_tiny_patch16_224",
            "--img-size",
            "32",
            "--forward-batch",
            "2",
            "--forward-rounds",
            "1",
        ),
    )
    assert re.search(r"seconds\s+[\d.]+\s+[\d.]+\s+[\d.]+x", out), out
    assert "% of a validation pass" in out


def test_bench_memory_measures_each_variant():
    """In-process (the script runs each variant in a fresh process, ~10 s of imports each): tiny ViT."""
    spec = importlib.util.spec_from_file_location(
        "bench_memory", os.path.join(REPO, "benchmarks", "bench_memory.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.COLLECT = False  # a full gc in the test process is slow; its RSS figures are not checked here
    res = [bench.measure("tiny", v, 4, 2, ["qkv"], "cpu", False) for v in ("plain", "lora+ckpt")]
    plain, both = res
    assert plain["trainable"] == plain["params"] > 50 * both["trainable"] > 0
    assert abs(plain["loss"] - both["loss"]) < 1e-5  # the same batch, the same (zero-head) start
    fields = ("weights", "activations", "step_peak", "total")
    assert all(isinstance(r[k], int) for r in res for k in fields) and all(r["seconds"] > 0 for r in res)
    out = bench.table(res)
    assert re.search(
        r"lora\+ckpt\s+[\d,]+\s+[\d.]+\s+-?[\d.]+\s+-?[\d.]+\s+[\d.]+\s+-?[\d.]+x\s+[\d.]+x", out
    ), out


def test_bench_checkpoint_prints_save_time_and_step_ratios(monkeypatch, capsys):
    """In-process (a subprocess would add ~8 s of imports): a tiny ViT, 1 timed step per variant."""
    spec = importlib.util.spec_from_file_location(
        "bench_checkpoint", os.path.join(REPO, "benchmarks", "bench_checkpoint.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = [
        "--backbone",
        "vit_tiny_patch16_224",
        "--depth",
        "1",
        "--img-size",
        "32",
        "--classes",
        "4",
        "--batch",
        "2",
    ]
    more = ["--steps", "1", "--saves", "1", "--every-n-steps", "1", "--rounds", "1"]
    monkeypatch.setattr("sys.argv", ["bench_checkpoint.py", *args, *more])
    bench.main()
    out = capsys.readouterr().out
    assert re.search(r"save: \d+ MB checkpoint .* best [\d.]+ s", out), out
    rows = re.findall(
        r"^(no step checkpoints|default: every 30 min|every 1 steps)\s+[\d.]+\s+([\d.]+)x$", out, re.M
    )
    assert [r[0] for r in rows] == ["no step checkpoints", "default: every 30 min", "every 1 steps"], out
    assert rows[0][1] == "1.000" and "projected: one" in out
