"""Run this first on any new GPU machine: one command, one markdown table of what vit-ft does there.

    python benchmarks/gpu_report.py                      # <= 8 minutes on one GPU, writes gpu_report.md
    python benchmarks/gpu_report.py --dry-run            # tiny sizes, CPU or GPU, under a minute: a smoke test
    python benchmarks/gpu_report.py --budget-s 300 --skip compile --out /tmp/report.md

Sections (one or more table rows each), in this order:

* device: the GPU, torch / CUDA / cuDNN / driver versions, the git commit; the peak dense bf16 FLOP/s
  from a table of known devices (else the measured matmul peak) and the measured matmul peak.
* train: a bare PyTorch loop vs vit-ft's Trainer (``benchmarks/bench_train.py``), bf16 autocast, ViT-B/32
  at 384 and ViT-B/16 at 224: images/s and MFU (model FLOPs per image from ``FlopCounterMode`` on one
  forward + backward, times images/s, over the peak). Compiled (``model.compile=true``) rows come last.
* loader: the loader alone on generated 500x375 JPEGs: CPU workers (decode + crop + resize) and the
  nvJPEG path (``data.decode_device=cuda``: workers plan, the GPU decodes), images/s.
* memory: ``benchmarks/bench_memory.py`` on CUDA: plain, gradient checkpointing, LoRA (rank 8, qkv).
* fsdp: ``train.py trainer=fsdp`` for 5 steps (saving last.ckpt), the same command resumed to step 7,
  then ``export.py`` of its checkpoint; each a subprocess, as a user runs them.

Each section is guarded: one that fails records its one-line error (its traceback, and the output of
the fsdp commands, go to ``<out>.logs/``) and the report goes on. ``--budget-s`` (default 480) bounds the whole run: a section whose
estimate does not fit in what is left is skipped (marked), and one that overruns is stopped. The table is
rewritten after every section, so an interrupted run still leaves what it measured.

``--dry-run``: tiny ViTs, few steps and images, fp32 on CPU (what the test suite runs); on CPU the
nvJPEG row decodes the planned batches on the CPU and the fsdp rows run the same three commands with
strategy ``auto`` (torch's FSDP needs CUDA); the rows say so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import importlib.util
import io
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

T_START = time.monotonic()  # the budget counts from here (before torch's import)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")
if SRC not in sys.path:  # this checkout's vit_ft, also where it is not installed
    sys.path.insert(0, SRC)

import torch  # noqa: E402

MIB = 2**20

# Dense (no sparsity) tensor-core peak of each device at the training precision (bf16, or fp16 where the
# device has no bf16 tensor cores), FLOP/s, from the vendors' data sheets. Matched in order against the
# lower-cased device name: more specific names first.
KNOWN_PEAKS: list[tuple[str, str, float]] = [
    ("gh200", "GH200", 989.4e12),
    ("h200 nvl", "H200 NVL", 835.0e12),
    ("h200", "H200 SXM", 989.4e12),
    ("h100 nvl", "H100 NVL", 835.0e12),
    ("h100 pcie", "H100 PCIe", 756.0e12),
    ("h100", "H100 SXM", 989.4e12),
    ("h800", "H800 SXM", 989.4e12),
    ("b200", "B200", 2250.0e12),
    ("a100", "A100 (40/80 GB)", 312.0e12),
    ("a800", "A800", 312.0e12),
    ("l40s", "L40S", 362.1e12),
    ("l40", "L40", 181.0e12),
    ("l4", "L4", 121.0e12),
    ("a10g", "A10G", 70.0e12),
    ("a10", "A10", 125.0e12),
    ("rtx 6000 ada", "RTX 6000 Ada", 364.2e12),
    ("rtx a6000", "RTX A6000", 154.8e12),
    ("a40", "A40", 149.7e12),
    ("rtx 4090", "RTX 4090", 165.2e12),
    ("rtx 3090", "RTX 3090", 71.0e12),
    ("v100", "V100 (fp16)", 125.0e12),
    ("t4", "T4 (fp16)", 65.0e12),
]


def known_peak(device_name: str) -> tuple[str, float] | None:
    """``(table name, dense FLOP/s)`` of a known device, else ``None``."""
    name = device_name.lower()
    for key, label, flops in KNOWN_PEAKS:
        if re.search(rf"\b{re.escape(key)}\b", name):  # whole words: "a40" is not the RTX A4000
            return label, flops
    return None


def load_bench(name: str) -> Any:
    """One of the benchmark scripts beside this one, as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- sizes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainModel:
    label: str
    backbone: str
    img_size: int
    timm_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    models: tuple[TrainModel, ...]
    batch: int
    steps: int
    warmup: int
    loader_images: int
    loader_batch: int
    loader_size: int
    loader_epochs: int  # timed epochs, after one untimed
    memory_model: str  # a bench_memory.MODELS key
    memory_batch: int
    fsdp_overrides: tuple[str, ...]
    peak_n: int
    # seconds each section is expected to take (the budget check): device, train eager (per model),
    # loader, memory, fsdp, compiled (per model)
    estimates: dict = field(default_factory=dict)


FULL = Sizes(
    models=(
        TrainModel("ViT-B/32 @384", "vit_base_patch32_384", 384),
        TrainModel("ViT-B/16 @224", "vit_base_patch16_224", 224),
    ),
    batch=128,
    steps=20,
    warmup=5,
    loader_images=2048,
    loader_batch=128,
    loader_size=224,
    loader_epochs=2,
    memory_model="b32",
    memory_batch=64,
    fsdp_overrides=("model=vit_b32_384", "model.weights=null", "data.batch_size=32", "data.num_workers=4"),
    peak_n=8192,
    estimates={"device": 15, "train": 40, "loader": 40, "memory": 45, "fsdp": 90, "compiled": 100},
)

DRY = Sizes(
    models=(
        TrainModel(
            "ViT-Ti/8 @32, depth 1 (dry run)", "vit_tiny_patch16_224", 32, {"patch_size": 8, "depth": 1}
        ),
        TrainModel("ViT-Ti/16 @32, depth 1 (dry run)", "vit_tiny_patch16_224", 32, {"depth": 1}),
    ),
    batch=4,
    steps=2,
    warmup=1,
    loader_images=24,
    loader_batch=8,
    loader_size=64,
    loader_epochs=1,
    memory_model="tiny",
    memory_batch=4,
    fsdp_overrides=(
        "model=vit_tiny",
        "model.img_size=32",
        "+model.timm_kwargs.depth=1",
        "data.batch_size=4",
        "data.num_workers=0",
    ),
    peak_n=256,
    estimates={"device": 5, "train": 10, "loader": 10, "memory": 10, "fsdp": 60, "compiled": 20},
)


# -- the table --------------------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    case: str
    result: str
    mfu: str = ""
    notes: str = ""


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}"[:300]


class SectionTimeout(BaseException):
    """The budget ran out inside a section (a BaseException: no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in this (main) thread after ``seconds``; no-op without SIGALRM."""
    if seconds is None or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"stopped after {seconds:.0f} s: the time budget (--budget-s) ran out")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Report:
    """Rows, the time budget, and the markdown file rewritten after every section."""

    def __init__(self, out: str, budget_s: float, title: str, t0: float | None = None) -> None:
        """``t0``: when the budget started (``time.monotonic``), by default now."""
        self.out, self.budget_s, self.title, self.clock = out, float(budget_s), title, time.monotonic
        self.t0 = self.clock() if t0 is None else t0
        self.rows: list[Row] = []
        self.logs = os.path.splitext(out)[0] + ".logs"

    def left(self) -> float:
        return self.budget_s - (self.clock() - self.t0)

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)

    def section(self, name: str, case: str, estimate: float, fn: Callable[[], list[Row]]) -> bool:
        """Run ``fn`` (which returns its rows, or adds them as it goes) guarded: skipped when ``estimate``
        seconds do not fit in the budget left, one FAILED row with the one-line error when it raises.
        True when it ran."""
        left = self.left()
        if estimate > left:
            self.add(
                Row(
                    name, case, "skipped", notes=f"budget: needs ~{estimate:.0f} s, {max(left, 0):.0f} s left"
                )
            )
            self.write()
            return False
        t0 = self.clock()
        try:
            with deadline(left):
                rows = fn()
        except (Exception, SectionTimeout) as e:
            self.add(Row(name, case, "FAILED", notes=one_line(e)))
            self._log(name, case, "".join(traceback.format_exception(e)))
            rows = None
        else:
            self.add(*rows)
        finally:
            _free()
        print(f"  {name}: {case}: {self.clock() - t0:.1f} s", file=sys.stderr, flush=True)
        self.write()
        return rows is not None

    def _log(self, name: str, case: str, text: str) -> None:
        os.makedirs(self.logs, exist_ok=True)
        safe = "".join(c if c.isalnum() else "_" for c in f"{name}_{case}")[:80]
        with open(os.path.join(self.logs, f"{safe}.log"), "a") as f:
            f.write(text)

    def markdown(self) -> str:
        lines = [
            f"# {self.title}",
            "",
            "| section | case | result | MFU | notes |",
            "|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {_cell(r.section)} | {_cell(r.case)} | {_cell(r.result)} | {_cell(r.mfu)} | {_cell(r.notes)} |"
            )
        lines += ["", f"{self.clock() - self.t0:.0f} s in all (budget {self.budget_s:.0f} s)."]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        d = os.path.dirname(os.path.abspath(self.out))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".gpu_report.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(self.markdown())
        os.replace(tmp, self.out)


def _native_bf16() -> bool:
    """bf16 tensor cores (Ampere and later); V100 and T4 only emulate bf16: fp16 there."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch without the argument
        return torch.cuda.get_device_capability() >= (8, 0)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- the run's context ------------------------------------------------------------------------------


class Context:
    """What the sections share: sizes, device, precision, a temporary folder, generated JPEGs."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, tmp: str) -> None:
        self.args, self.sizes, self.tmp = args, sizes, tmp
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        if self.cuda:
            self.precision = "bf16-mixed" if _native_bf16() else "16-mixed"
        else:
            self.precision = "32-true"  # the dry run on CPU: fp32 (bf16 on most CPUs is emulated, slow)
        self.peak: float | None = None
        self.peak_source = ""
        self.eager: dict[str, float] = {}  # vit-ft eager images/s per model label (for compiled/eager)
        self.flops: dict[str, float] = {}
        self._jpegs: str | None = None

    @property
    def dtype_name(self) -> str:
        return {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(self.precision, "fp32")

    def mfu(self, rate: float, label: str) -> str:
        if not self.peak or label not in self.flops:
            return ""
        return f"{100 * rate * self.flops[label] / self.peak:.1f}%"

    def jpegs(self) -> str:
        """``<tmp>/jpegs/{train,val}/<class>/*.jpg``, 500x375 (and some 375x500) photo-like JPEGs."""
        if self._jpegs is None:
            n = self.sizes.loader_images
            self._jpegs = make_jpegs(os.path.join(self.tmp, "jpegs"), n_train=n, n_val=max(8, n // 8))
        return self._jpegs

    def train_args(self, model: TrainModel) -> argparse.Namespace:
        s = self.sizes
        return argparse.Namespace(
            backbone=model.backbone,
            img_size=model.img_size,
            timm_kwargs=dict(model.timm_kwargs),
            batch=s.batch,
            classes=10,
            steps=s.steps,
            warmup=s.warmup,
            device=self.device,
            compile_mode="default",
            pin_memory=self.cuda,
        )


def make_jpegs(root: str, n_train: int, n_val: int, classes: int = 4, unique: int = 64) -> str:
    """Photo-like JPEGs (smooth colour fields plus grain, quality 90, ~50-100 KB at 500x375): ``unique``
    distinct images written as many times as needed (decoding costs the same; generating does not)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for i in range(min(unique, n_train + n_val)):
        w, h = (375, 500) if i % 4 == 3 else (500, 375)
        low = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(low, dtype=np.int16) + rng.integers(-10, 11, (h, w, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for j in range(n):
            folder = os.path.join(root, split, f"class{j % classes}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{j:05d}.jpg"), "wb") as f:
                f.write(blobs[k % len(blobs)])
            k += 1
    return root


# -- sections ---------------------------------------------------------------------------------------


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:  # a copy without .git: the commit may come from the environment
            return (
                os.environ.get("VIT_FT_GIT_COMMIT") or "unknown (not a git checkout; set VIT_FT_GIT_COMMIT)"
            )
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({one_line(e)})"


def _driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def matmul_peak(device: str, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """Measured FLOP/s of an ``n``x``n`` matmul at ``dtype`` (the best of ``reps``-long runs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def section_device(ctx: Context) -> list[Row]:
    import lightning
    import timm

    rows = []
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        name = props.name
        rows.append(
            Row(
                "device",
                "GPU",
                name,
                notes=f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
                f"compute capability {props.major}.{props.minor}, {torch.cuda.device_count()} visible; "
                f"host: {os.cpu_count()} CPUs",
            )
        )
        versions = (
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, driver {_driver()}; "
            f"lightning {lightning.__version__}, timm {timm.__version__}, Python {platform.python_version()}"
        )
    else:
        name = _cpu_name()
        rows.append(Row("device", "CPU (no CUDA device)", name, notes=f"{os.cpu_count()} CPUs, dry run"))
        versions = (
            f"no CUDA, no cuDNN; lightning {lightning.__version__}, timm {timm.__version__}, "
            f"Python {platform.python_version()}"
        )
    rows.append(Row("device", "torch", torch.__version__, notes=versions))
    rows.append(Row("device", "git commit", _git_commit(), notes=ROOT))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(ctx.dtype_name, torch.float32)
    measured = matmul_peak(ctx.device, dtype, ctx.sizes.peak_n)
    known = known_peak(name) if ctx.cuda else None
    if known:
        ctx.peak, ctx.peak_source = known[1], f"data sheet: {known[0]}, dense {ctx.dtype_name}"
    else:
        ctx.peak = measured
        ctx.peak_source = (
            f"measured {ctx.dtype_name} matmul ({'device not in the table' if ctx.cuda else 'CPU'})"
        )
    rows.append(
        Row("device", f"peak {ctx.dtype_name} FLOP/s (MFU's 100%)", _tflops(ctx.peak), notes=ctx.peak_source)
    )
    rows.append(
        Row(
            "device",
            f"measured {ctx.dtype_name} matmul",
            _tflops(measured),
            notes=f"{ctx.sizes.peak_n}x{ctx.sizes.peak_n}, best of 3; {measured / ctx.peak:.2f}x the peak above",
        )
    )
    return rows


def _tflops(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def section_train(ctx: Context, model: TrainModel) -> list[Row]:
    bt = load_bench("bench_train")
    args = ctx.train_args(model)
    ctx.flops[model.label] = flops = bt.train_flops_per_image(args)
    _free()
    bare = bt.bare_loop(args, ctx.precision)
    _free()
    ours = bt.lightning_loop(args, ctx.precision)[0]
    ctx.eager[model.label] = ours
    autocast = "fp32" if ctx.dtype_name == "fp32" else f"{ctx.dtype_name} autocast"
    what = f"{autocast}, batch {args.batch}, {args.steps} timed steps after {args.warmup}"
    sec = f"train {model.label}"
    return [
        Row(
            sec,
            "bare PyTorch loop",
            f"{bare:.1f} img/s",
            ctx.mfu(bare, model.label),
            f"{what}; {flops / 1e9:.2f} GFLOP per image (FlopCounterMode, fwd+bwd)",
        ),
        Row(
            sec,
            "vit-ft (Trainer)",
            f"{ours:.1f} img/s",
            ctx.mfu(ours, model.label),
            f"{ours / bare:.3f}x bare",
        ),
    ]


@contextlib.contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """vit-ft's ``model.compile`` with another torch.compile backend (``eager``: dynamo only, for the dry run)."""
    if backend == "inductor":
        yield
        return
    import vit_ft.models.classifier as classifier

    original = classifier.CompiledForward
    classifier.CompiledForward = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        classifier.CompiledForward = original


def section_compiled(ctx: Context, model: TrainModel) -> list[Row]:
    bt = load_bench("bench_train")
    args = ctx.train_args(model)
    if model.label not in ctx.flops:
        ctx.flops[model.label] = bt.train_flops_per_image(args)
    with compile_backend(ctx.args.compile_backend):
        rate, fn = bt.lightning_loop(args, ctx.precision, compile=True)
    if fn is None or not fn.active:
        raise RuntimeError(
            f"not compiled, ran eager: {getattr(fn, 'failure', None) or 'no compiled forward'}"
        )
    eager = ctx.eager.get(model.label)
    versus = f"{rate / eager:.3f}x vit-ft eager; " if eager else ""
    compile_s = f"{fn.compile_seconds:.0f} s" if fn.compile_seconds is not None else "?"
    return [
        Row(
            f"train {model.label}",
            f"vit-ft compiled (model.compile, backend {ctx.args.compile_backend})",
            f"{rate:.1f} img/s",
            ctx.mfu(rate, model.label),
            f"{versus}first compilation {compile_s} (untimed)",
        )
    ]


def loader_rate(ctx: Context, planned: bool) -> tuple[float, int]:
    """Images/s of the training loader over the generated JPEGs (one untimed epoch first), and the
    number timed. ``planned``: the ``decode_device=cuda`` path (on the CPU in a dry run without CUDA)."""
    from vit_ft.data.datamodule import ImageFolderDataModule
    from vit_ft.data.device_decode import PlannedBatch
    from vit_ft.preprocessing import Preprocessing

    s = ctx.sizes
    dm = ImageFolderDataModule(
        root=ctx.jpegs(),
        batch_size=s.loader_batch,
        num_workers=ctx.args.workers,
        decode_device="cuda" if planned and ctx.cuda else "cpu",
    )
    dm.batch_decode = planned  # on the CPU too in a dry run: the same code, torchvision decodes
    dm.configure_preprocessing(Preprocessing(img_size=s.loader_size))
    dm.setup()
    loader = dm.train_dataloader()
    device = ctx.device if planned else "cpu"
    n, t0 = 0, 0.0
    for epoch in range(1 + s.loader_epochs):
        if epoch == 1:
            t0 = time.perf_counter()
        for batch in loader:
            if isinstance(batch, PlannedBatch):
                batch = dm.on_after_batch_transfer(batch.to(device, non_blocking=True), 0)
            x = batch[0]
            if epoch >= 1:
                n += x.shape[0]
        if device == "cuda":
            torch.cuda.synchronize()
    rate = n / (time.perf_counter() - t0)
    del loader
    return rate, n


def section_loader(ctx: Context) -> list[Row]:
    s, w = ctx.sizes, ctx.args.workers
    root = ctx.jpegs()
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "train")) for f in fs]
    kib = sum(os.path.getsize(f) for f in files) / len(files) / 1024
    what = f"{len(files)} JPEGs 500x375 (~{kib:.0f} KiB), train transform to {s.loader_size}, batch {s.loader_batch}"
    rate, n = loader_rate(ctx, planned=False)
    rows = [
        Row("loader", f"CPU fast path, {w} workers", f"{rate:.0f} img/s", notes=f"{what}; {n} images timed")
    ]
    if ctx.cuda:
        rate, n = loader_rate(ctx, planned=True)
        case, note = f"nvJPEG (decode_device=cuda), {w} workers plan", f"{n} images timed, decoded on the GPU"
    else:
        rate, n = loader_rate(ctx, planned=True)
        case = f"nvJPEG path: no CUDA, planned batches decoded on the CPU, {w} workers plan"
        note = "dry run: the decode_device=cuda code with torchvision's CPU decoder (nvJPEG needs CUDA)"
    rows.append(Row("loader", case, f"{rate:.0f} img/s", notes=note))
    return rows


def section_memory(ctx: Context) -> list[Row]:
    bm = load_bench("bench_memory")
    bm.COLLECT = ctx.cuda  # a full gc per reading is slow in this big process; CPU RSS is a dry-run figure
    model, batch = ctx.sizes.memory_model, ctx.sizes.memory_batch
    backbone, size, _ = bm.MODELS[model]
    amp = ctx.cuda and ctx.dtype_name == "bf16"
    unit = "CUDA allocator" if ctx.cuda else "no CUDA: CPU RSS of this process (dry run, not comparable)"
    rows, plain = [], None
    for variant in ("plain", "ckpt", "lora"):
        _free()
        r = bm.measure(model, variant, batch, 8, ["qkv"], ctx.device, amp)
        plain = plain or r
        ratio = f"{r['total'] / plain['total']:.2f}x plain total" if plain["total"] > 0 else ""
        name = {"plain": "plain", "ckpt": "gradient checkpointing", "lora": "LoRA rank 8 (qkv)"}[variant]
        rows.append(
            Row(
                f"memory {backbone} @{size}",
                f"{name}, batch {batch}{', bf16' if amp else ''}",
                f"{r['total'] / MIB:.0f} MiB",
                notes=f"{unit}: weights {r['weights'] / MIB:.0f}, activations {r['activations'] / MIB:.0f}, "
                f"step peak {r['step_peak'] / MIB:.0f} MiB; {r['trainable']:,} trainable; {ratio}; "
                f"step {r['seconds']:.2f} s",
            )
        )
    return rows


def _cli(script: str, args: list[str], cwd: str, timeout: float, log: str) -> tuple[float, str]:
    """Run ``python <script> args`` (this checkout's); ``(seconds, output)``; one line on failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        PYTHONUNBUFFERED="1",
    )
    cmd = [sys.executable, os.path.join(ROOT, script), *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=max(timeout, 1.0)
        )
    except subprocess.TimeoutExpired as e:
        raise SectionTimeout(f"{script} stopped after {timeout:.0f} s: the time budget ran out") from e
    seconds = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{output}\nexit status {proc.returncode}\n\n")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        last = errors[-1] if errors else (lines[-1] if lines else "no output")
        raise RuntimeError(f"{script} exited {proc.returncode}: {last} (log: {log})")
    return seconds, output


def _global_step(ckpt: str) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def section_fsdp(ctx: Context, report: Report) -> list[Row]:
    """5 steps + save, resume to step 7, export: three subprocesses into one run folder. Rows are added
    as each command ends (a later failure keeps them). On CUDA, when the first command fails with the
    defaults, it is tried once more with ``trainer.gradient_clip_val=null`` (clipping by norm under FSDP
    goes through the root module's ``clip_grad_norm_``, never run on a GPU yet), so that the save / resume /
    export rows still get measured."""
    exported = os.path.join(ctx.tmp, "fsdp_exported")
    os.makedirs(report.logs, exist_ok=True)
    log = os.path.join(report.logs, "fsdp.log")
    if ctx.cuda:
        strategy = ["trainer=fsdp", "trainer.devices=1"]
        sec, how = "fsdp (1 GPU)", "trainer=fsdp, 1 GPU"
    else:
        strategy = ["trainer=cpu", "trainer.precision=32"]
        sec, how = "fsdp (dry run: strategy auto)", "trainer=cpu, strategy auto: torch's FSDP needs CUDA"

    def command(run: str, *extra: str) -> list[str]:
        return [
            "data=imagefolder",
            f"data.root={ctx.jpegs()}",
            *ctx.sizes.fsdp_overrides,
            *strategy,
            "trainer.enable_progress_bar=false",
            "trainer.num_sanity_val_steps=0",
            "callbacks.last_checkpoint.every_n_steps=5",
            "scheduler.warmup_steps=2",
            "logger=none",
            "test=false",
            *extra,
            f"hydra.run.dir={run}",
        ]

    run, extra = os.path.join(ctx.tmp, "fsdp_run"), []
    try:
        s1, _ = _cli("train.py", [*command(run), "trainer.max_steps=5"], ctx.tmp, report.left(), log)
    except RuntimeError as e:
        if not ctx.cuda:
            raise
        report.add(Row(sec, "train.py: 5 steps + save, defaults", "FAILED", notes=one_line(e)))
        run, extra = os.path.join(ctx.tmp, "fsdp_run_noclip"), ["trainer.gradient_clip_val=null"]
        how += ", again with trainer.gradient_clip_val=null"
        s1, _ = _cli("train.py", [*command(run, *extra), "trainer.max_steps=5"], ctx.tmp, report.left(), log)
    ckpt = os.path.join(run, "checkpoints", "last.ckpt")
    step = _global_step(ckpt)
    if step != 5:
        raise RuntimeError(f"last.ckpt after 5 steps is at step {step}")
    mb = os.path.getsize(ckpt) / 1e6
    report.add(
        Row(sec, "train.py: 5 steps + save", f"{s1:.1f} s", notes=f"{how}; last.ckpt {mb:.0f} MB, step 5")
    )
    s2, out = _cli("train.py", [*command(run, *extra), "trainer.max_steps=7"], ctx.tmp, report.left(), log)
    step = _global_step(ckpt)
    if step != 7 or "Restored all states" not in out:
        raise RuntimeError(f"the same command with trainer.max_steps=7 did not resume to step 7 (at {step})")
    report.add(
        Row(sec, "train.py again: resume to step 7", f"{s2:.1f} s", notes="restored last.ckpt, step 5 -> 7")
    )
    s3, _ = _cli("export.py", [f"ckpt_path={ckpt}", f"out={exported}"], ctx.tmp, report.left(), log)
    files = sorted(os.listdir(exported))
    if not files:
        raise RuntimeError(f"export.py wrote nothing into {exported}")
    report.add(Row(sec, "export.py of the resumed last.ckpt", f"{s3:.1f} s", notes=", ".join(files)))
    return []


# -- main -------------------------------------------------------------------------------------------

SECTIONS = ("device", "train", "loader", "memory", "fsdp", "compile")


def run_report(args: argparse.Namespace) -> Report:
    sizes = DRY if args.dry_run else FULL
    if args.batch:
        sizes = dataclasses.replace(sizes, batch=args.batch)
    if args.workers is None:
        args.workers = 2 if args.dry_run else min(16, os.cpu_count() or 1)
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.dry_run and not torch.cuda.is_available() else "inductor"
    mode = "dry run, tiny sizes" if args.dry_run else "full"
    title = f"vit-ft GPU report ({mode}), {time.strftime('%Y-%m-%d %H:%M %Z')}"
    report = Report(args.out, args.budget_s, title, t0=T_START)
    est = sizes.estimates
    skip = set(args.skip)
    with tempfile.TemporaryDirectory(prefix="gpu_report_") as tmp:
        ctx = Context(args, sizes, tmp)
        if ctx.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        plan: list[tuple[str, str, str, float, Callable[[], list[Row]]]] = [
            ("device", "device", "versions, peak FLOP/s", est["device"], lambda: section_device(ctx))
        ]
        for m in sizes.models:
            plan.append(
                (
                    "train",
                    f"train {m.label}",
                    "bare loop, vit-ft",
                    est["train"],
                    functools.partial(section_train, ctx, m),
                )
            )
        plan += [
            ("loader", "loader", "CPU workers, nvJPEG", est["loader"], lambda: section_loader(ctx)),
            ("memory", "memory", "plain, checkpointing, LoRA", est["memory"], lambda: section_memory(ctx)),
            (
                "fsdp",
                "fsdp",
                "5 steps + save, resume, export",
                est["fsdp"],
                lambda: section_fsdp(ctx, report),
            ),
        ]
        for m in sizes.models:
            plan.append(
                (
                    "compile",
                    f"train {m.label}",
                    "vit-ft compiled",
                    est["compiled"],
                    functools.partial(section_compiled, ctx, m),
                )
            )
        for key, name, case, estimate, fn in plan:
            if key in skip:
                report.add(Row(name, case, "skipped", notes=f"--skip {key}"))
                continue
            report.section(name, case, estimate, fn)
    report.write()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_report.md", help="the markdown table (default gpu_report.md)")
    p.add_argument("--budget-s", type=float, default=480.0, help="time budget of the whole run, seconds")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes: a smoke test (CPU or GPU)")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    p.add_argument(
        "--workers", type=int, default=None, help="loader workers (default min(16, CPUs); dry run 2)"
    )
    p.add_argument("--batch", type=int, default=None, help="training batch (default 128; dry run 4)")
    p.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default inductor; eager in a CPU dry run)",
    )
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU here; run with --dry-run for the CPU smoke test of this report",
            file=sys.stderr,
        )
        return 2
    import logging
    import warnings

    import lightning  # noqa: F401 - imported first: it sets its loggers' levels, quietened here

    for name in ("lightning.pytorch", "lightning.fabric", "vit_ft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    report = run_report(args)
    print(report.markdown(), end="")
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
