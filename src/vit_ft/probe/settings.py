"""The ``probe`` config node as typed settings, one dataclass per task (``probe.mode``).

Validated on construction from a plain dict, so a mistyped key or value is one ``ConfigError`` line
before any work starts (see conf/experiment/linear_probe.yaml and fewshot.yaml).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from vit_ft.errors import ConfigError
from vit_ft.probe.ridge import DEFAULT_L2

MODES = ("linear", "fewshot", "knn")
FEATURE_TYPES = ("cls", "mean", "cls+mean", "pool", "last4")
S = TypeVar("S", bound="FeatureSettings")


@dataclass
class FeatureSettings:
    """What feature extraction and its cache need; shared by every task."""

    MODE: ClassVar[str] = ""

    features: str = "cls"  # one of FEATURE_TYPES (see vit_ft.probe.extract.token_features)
    cache_dir: str | None = None  # null: in memory only
    on_bad_cache: str = "error"  # error | rebuild
    extract_batch_size: int | None = None  # null: data.eval_batch_size or the per-device batch

    @classmethod
    def from_dict(cls: type[S], d: dict[str, Any] | None) -> S:
        """Settings of ``cls.MODE`` from a plain dict (the resolved ``probe`` node)."""
        d = dict(d or {})
        mode = d.pop("mode", cls.MODE)
        if mode not in MODES:
            raise ConfigError(f"probe.mode={mode!r} must be linear, fewshot or knn")
        if mode != cls.MODE:
            raise ConfigError(cls.wrong_mode(mode))
        known = sorted({f.name for f in fields(cls)} | {"mode"})
        unknown = sorted(k for k in d if k not in known)
        if unknown:
            raise ConfigError(f"probe.{unknown[0]} is not a setting of probe.mode={mode} (known: {known})")
        s = cls(**d)
        s.validate()
        return s

    @classmethod
    def wrong_mode(cls, mode: str) -> str:
        return f"probe.mode={mode} is not {cls.MODE}"

    def validate(self) -> None:
        if self.features not in FEATURE_TYPES:
            raise ConfigError(
                f"probe.features={self.features!r} must be one of cls (final-norm CLS token), mean (mean "
                "patch token), cls+mean (both), pool (the model's own pooling), last4 (DINOv2's linear eval)"
            )
        if self.on_bad_cache not in ("error", "rebuild"):
            raise ConfigError(f"probe.on_bad_cache={self.on_bad_cache!r} must be error or rebuild")
        n = self.extract_batch_size
        if n is not None and (isinstance(n, bool) or int(n) < 1):
            raise ConfigError(f"probe.extract_batch_size={n!r} must be a positive integer")
        if self.cache_dir is not None:
            self.cache_dir = os.path.expanduser(str(self.cache_dir))


@dataclass
class LinearProbeSettings(FeatureSettings):
    """``probe.mode=linear``: a linear head trained by ``train.py`` (conf/experiment/linear_probe.yaml)."""

    MODE: ClassVar[str] = "linear"

    batchnorm: bool = False  # BatchNorm1d without affine in front of the head (MAE recipe)
    cache: bool = True  # false: backbone in the loop
    augment: bool = True  # cache=false only: train on the data's training augmentation

    @classmethod
    def wrong_mode(cls, mode: str) -> str:
        return f"probe.mode={mode} is run by its own job, not as a linear probe"


@dataclass
class FewshotSettings(FeatureSettings):
    """``probe.mode=fewshot``: the closed-form few-shot evaluation (conf/experiment/fewshot.yaml)."""

    MODE: ClassVar[str] = "fewshot"

    cache: bool = True  # kept for the shared config keys: few-shot always reads cached features
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25])  # images per class, sorted, unique
    seeds: int = 5  # draws of the support set per shot count
    l2_reg: float | str = DEFAULT_L2  # ridge strength, or "auto": chosen on held-out data
    eval_split: str | None = None  # null: test if the data has one, else val

    @classmethod
    def wrong_mode(cls, mode: str) -> str:
        return f"probe.mode={mode} is trained by train.py, not by the few-shot job"

    def validate(self) -> None:
        super().validate()
        shots = self.shots
        shots = [shots] if isinstance(shots, int) else list(shots or [])
        if not shots or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shots):
            raise ConfigError(f"probe.shots={shots!r} must be a list of positive integers, e.g. [1,5,10,25]")
        self.shots = sorted(set(shots))
        seeds = self.seeds
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(
                f"probe.seeds={seeds!r} must be a positive integer (how many draws of the shots)"
            )
        l2 = self.l2_reg
        if l2 != "auto" and (isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 > 0):
            raise ConfigError(f"probe.l2_reg={l2!r} must be a positive number (default 1024) or auto")


@dataclass
class KnnSettings(FeatureSettings):
    """``probe.mode=knn``: the weighted k-NN evaluation of DINO (conf/experiment/knn.yaml)."""

    MODE: ClassVar[str] = "knn"

    cache: bool = True  # kept for the shared config keys: k-NN always reads cached features
    k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])  # neighbours; capped at the train size
    temperature: float = 0.07  # vote weight exp(cosine / temperature)
    eval_split: str | None = None  # null: test if the data has one, else val
    query_chunk: int | None = None  # queries per similarity block; null: as many as fit in 256 MiB

    @classmethod
    def wrong_mode(cls, mode: str) -> str:
        return f"probe.mode={mode} is not the k-NN evaluation (experiment=knn)"

    def validate(self) -> None:
        super().validate()
        k = [self.k] if isinstance(self.k, int) else list(self.k or [])
        if not k or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in k):
            raise ConfigError(f"probe.k={k!r} must be a list of positive integers, e.g. [10,20,100,200]")
        self.k = sorted(set(k))
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ConfigError(f"probe.temperature={t!r} must be a positive number (DINO uses 0.07)")
        self.temperature = float(t)
        n = self.query_chunk
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"probe.query_chunk={n!r} must be a positive integer or null (automatic)")
