"""Inference: ONNX Runtime vs PyTorch eager on the same network, images/s side by side.

A ViT-B/32 at 384 (random init, ``timm.create_model("vit_base_patch32_384", pretrained=False)``, 1000
classes) is exported by vit-ft's ONNX writer (verified as ``export.py format=onnx`` does), then both run
normalised float images at each batch size: ``--warmup`` untimed calls, then the best of ``--repeats``
timed calls, PyTorch and ONNX Runtime alternating. Same threads for both (``--threads``; default: torch's). The ratio is ORT / PyTorch.

    python benchmarks/bench_onnx.py                       # CPU, batch 1 and 32
    python benchmarks/bench_onnx.py --repeats 2 --batches 1 8
    python benchmarks/bench_onnx.py --device cuda         # CUDA provider vs PyTorch on the GPU (fp32)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import timm
import torch

from vit_ft.preprocessing import preprocessing_from_timm
from vit_ft.weights.onnx import write_onnx
from vit_ft.weights.onnx_read import OnnxNet, providers


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_base_patch32_384")
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--depth", type=int, default=None, help="fewer blocks than the model's (smoke tests)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per batch size (best shown)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"], help="the ONNX file's")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return p.parse_args()


def _time(fn, x: torch.Tensor, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _best_pair(a, b, xa: torch.Tensor, xb: torch.Tensor, warmup: int, repeats: int, cuda: bool):
    """Best seconds per call of ``a(xa)`` and ``b(xb)``, timed alternately (a busy machine slows both)."""
    for _ in range(warmup):
        _time(a, xa, cuda), _time(b, xb, cuda)
    ta = tb = float("inf")
    for _ in range(repeats):
        ta, tb = min(ta, _time(a, xa, cuda)), min(tb, _time(b, xb, cuda))
    return ta, tb


def main() -> None:
    a = _args()
    if a.threads:
        torch.set_num_threads(a.threads)
    kw = {"depth": a.depth} if a.depth else {}
    torch.manual_seed(0)
    net = timm.create_model(a.model, pretrained=False, img_size=a.img_size, **kw).eval()
    pre = preprocessing_from_timm(net, a.img_size)
    x0 = torch.randn(4, 3, a.img_size, a.img_size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        path, check, exporter = write_onnx(
            net,
            Path(d) / "model.onnx",
            preprocessing=pre,
            class_names=[f"class_{i}" for i in range(net.num_classes)],
            inputs=x0,
            dtype=a.dtype,
        )
        export_s = time.perf_counter() - t
        size_mb = path.stat().st_size / 2**20
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch
        opts.add_session_config_entry(
            "session.intra_op.allow_spinning", "0"
        )  # idle threads leave PyTorch the cores
        ort_net = OnnxNet(ort.InferenceSession(str(path), opts, providers=providers(a.device)))
        cuda = a.device == "cuda"
        dev = torch.device(a.device)
        net = net.to(dev)
        print(
            f"{a.model} at {a.img_size} px, {a.dtype} ONNX ({size_mb:.0f} MB, {exporter} exporter, "
            f"written and verified in {export_s:.1f} s); torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads, ONNX Runtime {ort_net.provider}"
        )
        for line in check.lines():
            print(f"  {line}")
        print(f"{'batch':>5}  {'pytorch img/s':>14}  {'onnxruntime img/s':>18}  {'ratio':>6}")
        for b in a.batches:
            x = torch.randn(b, 3, a.img_size, a.img_size)
            pt, rt = _best_pair(net, ort_net, x.to(dev), x, a.warmup, a.repeats, cuda)
            print(f"{b:>5}  {b / pt:>14.3g}  {b / rt:>18.3g}  {pt / rt:>5.2f}x")


if __name__ == "__main__":
    main()
