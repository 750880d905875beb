"""The valid range of every numeric and enum key of ``conf/`` (and of predict.py / export.py), in one
table, and the check that runs it on a composed config before any data or model is set up.

:data:`RANGES` holds what each key accepts; :data:`NOT_RANGED` names every other key with why it has
no range (a path, a free-form name, a boolean, a mapping). A test reads every YAML under ``conf/`` and
the predict/export configs and fails on a key in neither, so a new key cannot slip in unaudited.
Enum values that the code also spells (``FEATURE_TYPES``, ``PRECISIONS``...) are compared with it by
the same test. Hydra-free: it reads a DictConfig or a plain dict alike (train, eval, predict, export,
and a sweep before its first job, :func:`vit_ft.sweeps.checks.check_sweep`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vit_ft.settings import AnyOf, ListOf, Node, Num, OneOf, Pattern, Range, check_value

COUNT = Num(lo=1, integer=True)  # batch sizes, epochs, steps, devices: at least one
COUNT_OR_NULL = Num(lo=1, integer=True, null=True)
ZERO_UP = Num(lo=0, integer=True)  # workers, warmup steps: zero means none
PROB = Num(0, 1)
SEED = Num(0, 2**32 - 1, integer=True)  # what Lightning's seed_everything (and numpy) accept
EVAL_CROP = AnyOf((OneOf(("auto", "none")), Num(0, 1, lo_open=True)), null=True)
LR_MAX = 10.0  # no ViT recipe comes near (the paper sweeps 0.003-0.06; LARS at batch 8k: ~10)
WD_MAX = 10.0  # decoupled decay multiplies by 1 - lr x wd each step; larger only overflows


def _timm_optimizers() -> Iterable[str]:
    from timm.optim import list_optimizers

    return list_optimizers()


def _accelerators() -> Iterable[str]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return AcceleratorRegistry.available_accelerators()


def _strategies() -> Iterable[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return StrategyRegistry.available_strategies()


def _signals() -> Iterable[str]:
    names = [s.name for s in signal.Signals]
    return names + [n[3:] for n in names]  # SIGTERM or TERM (callbacks.preemption adds SIG)


ACCELERATOR = OneOf(
    ("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    lazy=_accelerators,
    text="auto, cpu, gpu, cuda, mps, tpu or another accelerator Lightning knows",
)

RANGES: dict[str, Range] = {
    # -- conf/config.yaml, conf/eval.yaml (the root) ---------------------------------------------
    "seed": SEED,
    "recipe": OneOf(("auto", "paper")),  # training/recipe.py RECIPES
    # -- conf/data/*.yaml ----------------------------------------------------------------------------
    "data.batch_size": COUNT,
    "data.num_workers": ZERO_UP,
    "data.val_fraction": Num(0, 1, hi_open=True),
    "data.on_bad_image": OneOf(("error", "skip")),
    "data.seed": SEED,
    "data.eval_batch_size": COUNT_OR_NULL,
    "data.train_scale": ListOf(Num(0, 1, lo_open=True), length=2, ordered=True),  # crop area fractions
    "data.hflip": PROB,
    "data.decode_device": OneOf(("cpu", "cuda")),
    "data.eval_crop": EVAL_CROP,
    "data.shuffle_buffer": ZERO_UP,  # hf streaming; 0: no shuffling
    "data.class_index": OneOf(("ilsvrc", "present")),  # imagenet
    "data.sampler": OneOf(("none", "balanced", "sqrt")),  # vit_ft.data.resumable.SAMPLERS
    "data.samples_per_epoch": COUNT_OR_NULL,  # with data.sampler=balanced|sqrt
    # -- conf/model/*.yaml ---------------------------------------------------------------------------
    "model.img_size": COUNT_OR_NULL,  # eval.py: null keeps the weights' own
    "model.label_smoothing": Num(0, 1, hi_open=True),
    # inverse frequency, or one positive weight per class (the length is checked against the data)
    "model.class_weights": AnyOf((OneOf(("balanced",)), ListOf(Num(lo=0, lo_open=True))), null=True),
    "model.task": OneOf(("auto", "single", "multilabel")),
    "model.loss": OneOf(("default", "asl")),
    "model.asl.gamma_neg": Num(lo=0),
    "model.asl.gamma_pos": Num(lo=0),
    "model.asl.clip": Num(0, 1, hi_open=True),
    "model.drop_path_rate": Num(0, 1, hi_open=True),  # 1 would drop every block (and divide by 0)
    "model.preprocessing_override.mean": ListOf(Num(0, 1), length=3, null=True),  # of pixels in [0, 1]
    "model.preprocessing_override.std": ListOf(Num(0, 1, lo_open=True), length=3, null=True),
    "model.preprocessing_override.interpolation": OneOf(("bilinear", "bicubic", "nearest"), null=True),
    "model.mixup.mixup_alpha": Num(lo=0),  # Beta(alpha, alpha); 0: off
    "model.mixup.cutmix_alpha": Num(lo=0),
    "model.mixup.prob": PROB,
    "model.mixup.switch_prob": PROB,
    "model.random_erasing": PROB,
    "model.lora.rank": Num(lo=0, integer=True, null=True),  # 0/null: off; <= the layer width: inject_lora
    "model.lora.alpha": Num(lo=0, lo_open=True),
    "model.lora.dropout": Num(0, 1, hi_open=True),
    "model.lora.targets": ListOf(
        OneOf(
            ("qkv", "proj", "fc1", "fc2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
            text="one of qkv, proj, fc1, fc2",
        ),
        scalar=True,
    ),
    "model.ema.decay": Num(0, 1, lo_open=True, hi_open=True, null=True),
    "model.ema.use_for": OneOf(("eval", "export", "none")),
    "model.compile_mode": OneOf(("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
    # -- conf/optimizer/*.yaml -------------------------------------------------------------------------
    "optimizer.name": OneOf(
        ("sgd", "nesterov"),
        lazy=_timm_optimizers,
        text="sgd, nesterov, adamw, lamb, lars or another timm optimizer (timm.optim.list_optimizers())",
    ),
    "optimizer.lr": Num(0, LR_MAX, lo_open=True, null=True),  # null: from lr_base (training/recipe.py)
    "optimizer.lr_base": Num(0, LR_MAX, lo_open=True, null=True),
    "optimizer.lr_base_size": COUNT,
    "optimizer.lr_base_scale": OneOf(("linear", "sqrt"), null=True),
    "optimizer.weight_decay": Num(0, WD_MAX),
    "optimizer.momentum": Num(0, 1, hi_open=True),
    "optimizer.betas": ListOf(Num(0, 1, hi_open=True), length=2),
    "optimizer.layer_decay": Num(0, 1, lo_open=True, null=True),  # > 1 would train the embeddings fastest
    # -- conf/scheduler/*.yaml -------------------------------------------------------------------------
    "scheduler.warmup_steps": ZERO_UP,
    "scheduler.decay": OneOf(("cosine", "linear", "constant")),
    "scheduler.min_lr_ratio": PROB,
    # -- conf/trainer/*.yaml (Lightning's Trainer, and vit-ft's on_nonfinite / max_nonfinite_skips) -----
    "trainer.accelerator": ACCELERATOR,
    "trainer.devices": AnyOf(
        (
            Num(lo=1, integer=True, also=(-1,)),  # -1: all
            OneOf(("auto",)),
            ListOf(Num(lo=0, integer=True)),  # device indices
            Pattern(r"\s*(-1|\d+(\s*,\s*\d+)*\s*,?)\s*", "a string such as '2' or '0,1'", ("2", "0,1")),
        )
    ),
    "trainer.strategy": AnyOf(
        (
            OneOf(("auto",), lazy=_strategies, text="auto, ddp, fsdp or another strategy Lightning knows"),
            Node(),  # conf/trainer/fsdp.yaml
        )
    ),
    "trainer.num_nodes": COUNT,
    "trainer.precision": OneOf(
        ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64", "64-true", 32, 64, "auto"),
        null=True,
        text="one of 32, 32-true, 64, 64-true, bf16-mixed, 16-mixed, bf16-true, 16-true, auto",
    ),
    "trainer.max_epochs": Num(lo=1, integer=True, also=(-1,), null=True),  # -1/null: counted in steps
    "trainer.max_steps": Num(lo=1, integer=True, also=(-1,), null=True),
    "trainer.gradient_clip_val": Num(0, lo_open=True, null=True),
    "trainer.gradient_clip_algorithm": OneOf(("norm", "value")),
    "trainer.on_nonfinite": OneOf(("stop", "skip")),
    "trainer.max_nonfinite_skips": COUNT,
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.log_every_n_steps": COUNT,
    "trainer.check_val_every_n_epoch": COUNT_OR_NULL,
    "trainer.val_check_interval": AnyOf((Num(0, 1, lo_open=True), COUNT), null=True),  # epoch share | batches
    "trainer.num_sanity_val_steps": Num(lo=-1, integer=True),  # -1: all
    "trainer.deterministic": OneOf((True, False, "warn"), null=True),
    "trainer.strategy.accelerator": ACCELERATOR,
    "trainer.strategy.sharding_strategy": OneOf(("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")),
    "trainer.strategy.state_dict_type": OneOf(("full", "sharded")),
    # -- conf/callbacks/default.yaml, conf/hparams_search/*.yaml ------------------------------------------
    "callbacks.model_checkpoint.mode": OneOf(("min", "max")),
    "callbacks.model_checkpoint.save_top_k": Num(lo=-1, integer=True),  # -1: all, 0: none
    "callbacks.last_checkpoint.save_top_k": Num(lo=-1, integer=True),
    "callbacks.last_checkpoint.every_n_steps": COUNT_OR_NULL,
    "callbacks.last_checkpoint.every_minutes": Num(0, lo_open=True, null=True),
    "callbacks.metrics_history.every_n_steps": COUNT_OR_NULL,
    "callbacks.run_report.max_share": Num(0, 1, lo_open=True, null=True),
    "callbacks.preemption.signals": ListOf(
        OneOf(lazy=_signals, text="a signal name such as SIGTERM or SIGUSR1"), scalar=True
    ),
    # -- conf/logger/*.yaml ---------------------------------------------------------------------------
    "logger.wandb.mode": OneOf(("auto", "online", "offline", "disabled"), null=True),
    "logger.wandb.log_model": OneOf((True, False, "all")),
    # -- probe (conf/experiment/linear_probe.yaml, fewshot.yaml, knn.yaml) ---------------------------------
    "probe.mode": OneOf(("linear", "fewshot", "knn")),
    "probe.features": OneOf(("cls", "mean", "cls+mean", "pool", "last4")),
    "probe.on_bad_cache": OneOf(("error", "rebuild")),
    "probe.extract_batch_size": COUNT_OR_NULL,
    "probe.shots": ListOf(COUNT, scalar=True),
    "probe.seeds": COUNT,
    "probe.l2_reg": AnyOf((Num(0, 1e12, lo_open=True), OneOf(("auto",)))),  # auto's grid: 2^-10..2^20
    "probe.k": ListOf(COUNT, scalar=True),
    "probe.temperature": Num(lo=0.02),  # exp(similarity / T) overflows float32 below ~0.012
    "probe.query_chunk": COUNT_OR_NULL,
    # -- hydra: conf/hparams_search/optuna.yaml, conf/hydra/launcher/slurm.yaml (checked by sweeps) --------
    "hydra.sweeper.n_trials": COUNT,
    "hydra.sweeper.n_jobs": COUNT,
    "hydra.sweeper.max_failure_rate": PROB,
    "hydra.sweeper.sampler.seed": Num(0, 2**32 - 1, integer=True, null=True),
    "hydra.sweeper.sampler.n_startup_trials": ZERO_UP,
    "hydra.launcher.timeout_min": COUNT,
    "hydra.launcher.nodes": COUNT,
    "hydra.launcher.tasks_per_node": COUNT,  # slurm.yaml: ${trainer.devices}, which must be a number there
    "hydra.launcher.gpus_per_node": Num(lo=0, integer=True, null=True),
    "hydra.launcher.cpus_per_task": COUNT_OR_NULL,
    "hydra.launcher.mem_gb": COUNT_OR_NULL,
    "hydra.launcher.cpus_per_gpu": COUNT_OR_NULL,
    "hydra.launcher.gpus_per_task": Num(lo=0, integer=True, null=True),
    "hydra.launcher.signal_delay_s": ZERO_UP,
    "hydra.launcher.max_num_timeout": ZERO_UP,
    "hydra.launcher.array_parallelism": COUNT,
    # -- predict.py / export.py (vit_ft.tasks.predict.PredictConfig, vit_ft.tasks.export.ExportConfig) ------
    "topk": COUNT,
    "batch_size": COUNT,
    "num_workers": Num(lo=0, integer=True, null=True),  # null: automatic
    "device": Pattern(
        r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:<index>", ("auto", "cuda:1")
    ),
    "precision": OneOf(("auto", "32", "32-true", "fp32", "bf16", "bf16-mixed", "16", "16-mixed", "fp16")),
    "on_bad_image": OneOf(("error", "skip")),
    "img_size": COUNT_OR_NULL,
    "eval_crop": EVAL_CROP,
    "format": OneOf(("both", "hf", "timm", "onnx")),
    "dtype": OneOf(("fp32", "fp16")),  # export.py format=onnx
    "opset": OneOf((17, 18)),  # export.py format=onnx: what ONNX Runtime and TensorRT >= 8.6 read
    "num_classes": COUNT_OR_NULL,
    "threshold": Num(0, 1, null=True),  # predict.py: multi-label threshold for every label
}

_BOOL = "a boolean (true/false)"
_PATH = "a path or folder"
_NAME = "a free-form name or id"

# Every other key, with why it has no range; a node listed here covers its keys.
NOT_RANGED: dict[str, str] = {
    "task_name": "a free-form name (the run folder's)",
    "ckpt_path": "a path, auto or null; its file is checked by check_user_files",
    "optimized_metric": "a metric name (any logged metric)",
    "monitor": "a logged metric name, checked against the evaluator's names (tasks/plan.check_monitor)",
    "test": _BOOL,
    "predictions": _BOOL + "; eval.py checks it with its own line",
    "data.root": _PATH,
    "data.shard_cache": _PATH + " or null (data=webdataset: a local folder for remote shards)",
    "data.name": "a hub id or folder, checked when loading",
    "data.config_name": _NAME,
    "data.image_column": "a column name of the data set",
    "data.label_column": "a column name of the data set",
    "data.train_split": "a split name of the data set",
    "data.val_split": "a split name of the data set",
    "data.hf_cache_dir": _PATH,
    "data.revision": "a git revision of the hub data set",
    "data.val_labels": _PATH,
    "data.train": "shard paths or URLs (data=webdataset) or a manifest file (data=manifest), checked when read",
    "data.val": "shard paths or URLs, or a manifest file, or null; checked when read",
    "data.test": "shard paths or URLs, or a manifest file, or null; checked when read",
    "data.index": "a shard index.json path or URL",
    "data.classes": "a list of class names or null",
    "data.cache_dir": _PATH,
    "data.auto_augment": "a timm RandAugment/AutoAugment spec string (rand-m9-mstd0.5), parsed by timm",
    "data.streaming": _BOOL,
    "data.pin_memory": _BOOL + " or null",
    "data.persistent_workers": _BOOL,
    "data.extra_eval": "a mapping of set names to {root | name, split, labels_file, ...}; checked by data/extra_eval.py",
    "model.backbone": "a timm model name (timm refuses an unknown one)",
    "model.weights": "a hub id, timm tag or file",
    "model.timm_kwargs": "a mapping passed to timm.create_model as is",
    "model.freeze_backbone": _BOOL,
    "model.reset_head": _BOOL,
    "model.grad_checkpointing": _BOOL,
    "model.ema.warmup": _BOOL,
    "model.ema.device": "a torch device string or null, checked by torch.device (check_ema_config)",
    "model.compile": _BOOL,
    "trainer.default_root_dir": _PATH,
    "trainer.benchmark": _BOOL + " or null",
    "trainer.enable_model_summary": _BOOL,
    "trainer.enable_progress_bar": _BOOL,
    "trainer.sync_batchnorm": _BOOL,
    "trainer.use_distributed_sampler": _BOOL,
    "trainer.strategy.activation_checkpointing": _BOOL,
    "trainer.strategy.cpu_offload": _BOOL,
    "callbacks.model_checkpoint.dirpath": _PATH,
    "callbacks.model_checkpoint.filename": "a file name template",
    "callbacks.model_checkpoint.monitor": "a metric name",
    "callbacks.model_checkpoint.save_last": _BOOL,
    "callbacks.model_checkpoint.auto_insert_metric_name": _BOOL,
    "callbacks.last_checkpoint.dirpath": _PATH,
    "callbacks.last_checkpoint.filename": "a file name",
    "callbacks.last_checkpoint.monitor": "a metric name or null",
    "callbacks.last_checkpoint.enable_version_counter": _BOOL,
    "callbacks.metrics_history.dirpath": _PATH,
    "callbacks.run_report.dirpath": _PATH,
    "callbacks.preemption.dirpath": _PATH,
    "callbacks.preemption.filename": "a file name",
    "callbacks.preemption.requeue": _BOOL,
    "logger.wandb.project": _NAME,
    "logger.wandb.name": _NAME,
    "logger.wandb.group": _NAME,
    "logger.wandb.tags": "a list of free-form tags",
    "logger.wandb.entity": _NAME,
    "logger.wandb.save_dir": _PATH,
    "logger.wandb.id": _NAME,
    "logger.csv.save_dir": _PATH,
    "logger.csv.name": _NAME,
    "logger.csv.version": _NAME,
    "paths.output_dir": _PATH,
    "paths.cache_dir": _PATH,
    "probe.batchnorm": _BOOL,
    "probe.cache": _BOOL,
    "probe.augment": _BOOL,
    "probe.cache_dir": _PATH,
    "probe.eval_split": "a split name, checked against the data's splits (held_out_split)",
    "hydra.run.dir": _PATH,
    "hydra.sweep.dir": _PATH,
    "hydra.sweep.subdir": _PATH,
    "hydra.job.chdir": _BOOL,
    "hydra.sweeper.direction": "null (from optimized_metric, sweeps/optuna.settle_direction), minimize or "
    "maximize, typed by hydra-optuna-sweeper's schema (an enum)",
    "hydra.callbacks.run_folder_guard.training": _BOOL
    + " (train.py's guard or eval.py's: tasks/run_lock.py)",
    "hydra.sweeper.study_name": _NAME,
    "hydra.sweeper.storage": "an Optuna storage URL, checked by check_storage",
    "hydra.sweeper.params": "search spaces; each trial's values are checked in that trial",
    "hydra.launcher.submitit_folder": _PATH,
    "hydra.launcher.name": _NAME,
    "hydra.launcher.stderr_to_stdout": _BOOL,
    "hydra.launcher.partition": "a SLURM name",
    "hydra.launcher.qos": "a SLURM name",
    "hydra.launcher.account": "a SLURM name",
    "hydra.launcher.comment": "free text",
    "hydra.launcher.constraint": "a SLURM feature expression",
    "hydra.launcher.exclude": "a SLURM node list",
    "hydra.launcher.gres": "a SLURM gres string (gpu:8)",
    "hydra.launcher.mem_per_gpu": "a SLURM memory string (4G)",
    "hydra.launcher.mem_per_cpu": "a SLURM memory string (4G)",
    "hydra.launcher.additional_parameters": "a mapping of sbatch options",
    "hydra.launcher.setup": "shell lines",
    "weights": "a checkpoint, hub id, timm tag or file (predict.py, export.py)",
    "images": "a file, folder or list of them (predict.py)",
    "out": _PATH + " (predict.py, export.py)",
    "backbone": "a timm model name (predict.py, export.py)",
    "timm_kwargs": "a mapping passed to timm.create_model (predict.py)",
    "quiet": _BOOL + " (predict.py)",
    "card": _BOOL + " (export.py: README.md model card beside the export)",
    "license": "a Hub license id (apache-2.0, mit, ...), checked by vit_ft.publish.card (export.py)",
    "push_to_hub": "a Hub repository id org/name, checked by vit_ft.publish.hub (export.py)",
    "hub": "export.py's push settings: hub.private (a boolean), hub.revision (a branch name or null)",
}

_ABSENT = object()


def lookup(cfg: Any, key: str) -> Any:
    """The value at dotted ``key`` as plain Python (lists and dicts), or ``_ABSENT``. A value that
    cannot be read here (an interpolation only Hydra's app resolves) is left to its consumer."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping):
            return _ABSENT
        try:
            if part not in node:
                return _ABSENT
            node = node[part]
        except Exception:  # noqa: BLE001 - omegaconf's resolution errors (Hydra-free: not imported)
            return _ABSENT
    return plain(node)


def plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def skipped(key: str, skip: Iterable[str]) -> bool:
    return any(key == s or key.startswith(s + ".") for s in skip)


def check_ranges(cfg: Any, skip: Iterable[str] = ()) -> None:
    """Raise the one-line :class:`~vit_ft.errors.ConfigError` of the first key of ``cfg`` outside its
    range (keys absent from ``cfg`` are not this entry point's; ``skip``: keys and nodes left to each
    job, e.g. a sweep's swept keys)."""
    skip = [s.lstrip("+~") for s in skip]
    for key, rng in RANGES.items():
        if skipped(key, skip):
            continue
        value = lookup(cfg, key)
        if value is not _ABSENT:
            check_value(key, value, rng)
