"""``python benchmarks/gpu_report.py --dry-run``: one CPU run of the whole report (tiny sizes) must give
every section's rows with numbers; in-process: the section guard (a failure is one row, the report goes
on), the time budget (skipped, or stopped), and the table of known devices' peaks."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import re
import sys
import time

import pytest
import torch

from tests.helpers import ROOT, run_cli


@functools.cache
def _module():
    spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "benchmarks" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rows(markdown: str) -> list[dict[str, str]]:
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| section |"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows.append(dict(zip(("section", "case", "result", "mfu", "notes"), cells)))
    return rows


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_report")
    out = tmp / "report.md"
    t0 = time.monotonic()
    # a budget above the default: a busy test machine must not make the report skip sections
    args = ("--dry-run", "--out", str(out), "--budget-s", "600")
    proc = run_cli("benchmarks/gpu_report.py", *args, tmp_path=tmp, timeout=900)
    return proc, out.read_text(), time.monotonic() - t0


def test_dry_run_table_has_every_section_with_numbers(dry_run):
    proc, text, seconds = dry_run
    assert text in proc.stdout  # printed as written
    rows = _rows(text)
    assert not [r for r in rows if r["result"] in ("FAILED", "skipped")], text
    by = {(r["section"], r["case"]): r for r in rows}
    number = re.compile(r"^\d[\d,.]* ")
    # device: name, versions, commit, peak used for MFU and the measured matmul peak
    device = {case: r for (sec, case), r in by.items() if sec == "device"}
    assert {"torch", "git commit"} <= set(device) and re.match(
        r"[0-9a-f]{12}|unknown", device["git commit"]["result"]
    )
    assert "no CUDA" in device["torch"]["notes"]
    peaks = [r for case, r in device.items() if "FLOP/s" in case or "matmul" in case]
    assert len(peaks) == 2 and all(re.match(r"\d[\d.]* [GT]FLOP/s$", r["result"]) for r in peaks), text
    # train: bare, vit-ft, compiled for both (tiny) models, images/s and MFU
    for model in ("ViT-Ti/8", "ViT-Ti/16"):
        train = [r for r in rows if r["section"].startswith(f"train {model} ")]
        assert [r["case"].split(" (")[0] for r in train] == [
            "bare PyTorch loop",
            "vit-ft",
            "vit-ft compiled",
        ], text
        assert all(
            re.match(r"\d[\d.]* img/s$", r["result"]) and re.match(r"\d[\d.]*%$", r["mfu"]) for r in train
        )
        assert "GFLOP per image (FlopCounterMode" in train[0]["notes"] and re.search(
            r"[\d.]+x bare", train[1]["notes"]
        )
    # loader: CPU workers, and the nvJPEG path run on the CPU with a stated reason
    loader = [r for r in rows if r["section"] == "loader"]
    assert len(loader) == 2 and all(re.match(r"\d+ img/s$", r["result"]) for r in loader), text
    assert "500x375" in loader[0]["notes"] and "no CUDA" in loader[1]["case"]
    # memory: plain, checkpointing, LoRA (CPU RSS in the dry run, said so)
    memory = [r for r in rows if r["section"].startswith("memory ")]
    assert [r["case"].split(",")[0] for r in memory] == [
        "plain",
        "gradient checkpointing",
        "LoRA rank 8 (qkv)",
    ]
    assert all(re.match(r"-?\d+ MiB$", r["result"]) and "no CUDA" in r["notes"] for r in memory), text
    # fsdp: the three commands, with the strategy the dry run used
    fsdp = [r for r in rows if r["section"].startswith("fsdp")]
    assert len(fsdp) == 3 and all(number.match(r["result"]) for r in fsdp), text
    assert "strategy auto" in fsdp[0]["section"] and "step 5 -> 7" in fsdp[1]["notes"]
    assert "model.safetensors" in fsdp[2]["notes"]
    print(f"gpu_report --dry-run: {seconds:.0f} s")


def test_a_failing_section_is_one_row_and_the_report_goes_on(tmp_path):
    gr = _module()
    report = gr.Report(str(tmp_path / "r.md"), budget_s=60, title="t")

    def broken():
        raise ValueError("no such thing\nsecond line")

    assert not report.section("a", "broken", 1, broken)
    assert report.section("b", "fine", 1, lambda: [gr.Row("b", "fine", "1 img/s")])
    rows = _rows((tmp_path / "r.md").read_text())
    assert [(r["section"], r["result"], r["notes"]) for r in rows] == [
        ("a", "FAILED", "ValueError: no such thing"),
        ("b", "1 img/s", ""),
    ]
    assert "no such thing" in next((tmp_path / "r.logs").iterdir()).read_text()  # the traceback


def test_budget_skips_what_does_not_fit_and_stops_what_overruns(tmp_path):
    gr = _module()
    report = gr.Report(str(tmp_path / "r.md"), budget_s=0.5, title="t")
    ran = []
    assert not report.section("a", "too long", 10, lambda: ran.append(1) or [])

    def forever():
        while True:
            time.sleep(0.01)

    t0 = time.monotonic()
    assert not report.section("b", "overruns", 0.1, forever)
    assert time.monotonic() - t0 < 5 and not ran
    (a, b) = _rows(report.markdown())
    assert a["result"] == "skipped" and a["notes"].startswith("budget: needs ~10 s")
    assert b["result"] == "FAILED" and "time budget (--budget-s) ran out" in b["notes"]


@pytest.mark.parametrize(
    "name, table",
    [
        ("NVIDIA H100 80GB HBM3", ("H100 SXM", 989.4e12)),
        ("NVIDIA H100 PCIe", ("H100 PCIe", 756e12)),
        ("NVIDIA H200", ("H200 SXM", 989.4e12)),
        ("NVIDIA A100-SXM4-40GB", ("A100 (40/80 GB)", 312e12)),
        ("NVIDIA L40S", ("L40S", 362.1e12)),
        ("NVIDIA L4", ("L4", 121e12)),
        ("NVIDIA A10G", ("A10G", 70e12)),
        ("NVIDIA GeForce RTX 4090", ("RTX 4090", 165.2e12)),
        ("Tesla V100-SXM2-16GB", ("V100 (fp16)", 125e12)),
        ("NVIDIA RTX A4000", None),  # not the A40: measured instead
    ],
)
def test_known_device_peaks(name, table):
    assert _module().known_peak(name) == table


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the full report")
def test_full_report_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    assert _module().main(["--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no CUDA GPU here") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.md").exists()


def test_fsdp_on_cuda_retries_without_clipping_and_keeps_rows_done(tmp_path, monkeypatch):
    """The CUDA-only branch, with the three commands faked: the defaults fail (Lightning's FSDP refuses
    clipping by norm), the retry without clipping saves, resumes and exports; rows come as each ends."""
    gr = _module()
    calls = []

    def fake_cli(script, args, cwd, timeout, log):
        calls.append((script, args))
        if script == "export.py":
            out = next(a for a in args if a.startswith("out=")).split("=", 1)[1]
            os.makedirs(out)
            open(os.path.join(out, "model.safetensors"), "w").close()
            return 1.0, ""
        if "trainer.gradient_clip_val=null" not in args:
            raise RuntimeError("train.py exited 1: MisconfigurationException: clipping by norm")
        run = next(a for a in args if a.startswith("hydra.run.dir=")).split("=", 1)[1]
        steps = int(next(a for a in args if a.startswith("trainer.max_steps=")).split("=")[1])
        os.makedirs(os.path.join(run, "checkpoints"), exist_ok=True)
        torch.save({"global_step": steps}, os.path.join(run, "checkpoints", "last.ckpt"))
        return 2.0, "Restored all states from the checkpoint" if steps == 7 else ""

    monkeypatch.setattr(gr, "_cli", fake_cli)
    report = gr.Report(str(tmp_path / "r.md"), budget_s=60, title="t")
    ctx = gr.Context(argparse.Namespace(), gr.DRY, str(tmp_path))
    ctx.cuda, ctx._jpegs = True, str(tmp_path / "jpegs")
    assert report.section("fsdp", "all", 1, lambda: gr.section_fsdp(ctx, report))
    rows = _rows(report.markdown())
    assert [(r["case"], r["result"]) for r in rows] == [
        ("train.py: 5 steps + save, defaults", "FAILED"),
        ("train.py: 5 steps + save", "2.0 s"),
        ("train.py again: resume to step 7", "2.0 s"),
        ("export.py of the resumed last.ckpt", "1.0 s"),
    ]
    assert "clipping by norm" in rows[0]["notes"] and "gradient_clip_val=null" in rows[1]["notes"]
    assert [s for s, _ in calls] == ["train.py", "train.py", "train.py", "export.py"]
    assert "trainer=fsdp" in calls[0][1] and all("trainer.gradient_clip_val=null" in a for _, a in calls[1:3])

    # a later failure keeps the rows already done, then its own FAILED row
    monkeypatch.setattr(
        gr, "_cli", lambda script, *a: fake_cli(script, *a) if script != "export.py" else 1 / 0
    )
    report = gr.Report(str(tmp_path / "r2.md"), budget_s=60, title="t")
    ctx.tmp = str(tmp_path / "again")
    assert not report.section("fsdp", "all", 1, lambda: gr.section_fsdp(ctx, report))
    assert [r["result"] for r in _rows(report.markdown())] == ["FAILED", "2.0 s", "2.0 s", "FAILED"]
