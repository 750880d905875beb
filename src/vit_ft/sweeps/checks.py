"""Checks a sweep makes before any job runs, each ending it with one ``error:`` line (exit 2):
every swept key exists, an Optuna search space is not empty, an Optuna storage holds this study (or none)
with the same direction and search space."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from vit_ft.compat import optuna_sqlite_stamp_fix
from vit_ft.errors import ConfigError
from vit_ft.settings_ranges import check_ranges


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def is_optuna(cfg: Any) -> bool:
    return "optuna" in str(cfg.hydra.sweeper.get("_target_", "")).lower()


def sweep_arguments(cfg: Any) -> list[str]:
    """The sweep's overrides as the sweeper sees them: ``hydra.sweeper.params``, then the command line."""
    params = cfg.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    args = [f"{k}={v}" for k, v in params.items()]
    args += [str(o) for o in cfg.hydra.overrides.task]
    return args


def sample_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """One composable value per override (the first of a sweep); the swept keys."""
    parsed = OverridesParser.create().parse_overrides(args)
    fixed: dict[str, str] = {}
    sweeps: dict[str, str] = {}
    for o in parsed:  # as the Optuna sweeper: a fixed value of a key wins over a range of it
        key = o.get_key_element()
        if o.is_delete():
            fixed[key] = key
        elif o.is_sweep_override():
            value = str(o.value().start) if o.is_interval_sweep() else next(iter(o.sweep_string_iterator()))
            sweeps[key] = f"{key}={value}"
        else:
            fixed[key] = f"{key}={o.get_value_element_as_str()}"
    swept = [k for k in sweeps if k not in fixed]
    return list(fixed.values()) + [sweeps[k] for k in swept], swept


def check_sweep(cfg: Any) -> None:
    """Fail with one line before any job runs: unknown swept key, empty search space, foreign storage."""
    args = sweep_arguments(cfg)
    try:
        overrides, swept = sample_overrides(args)
    except Exception as e:  # noqa: BLE001 - the parser's message
        fail(f"cannot parse the sweep's overrides: {' '.join(str(e).split())}")
        return
    if is_optuna(cfg) and not swept:
        fail(
            "the Optuna search space is empty: give hydra.sweeper.params or sweep values on the command line, "
            "e.g. 'optimizer.lr=tag(log,interval(0.001,0.1))' or 'optimizer.lr=choice(0.003,0.01)'"
        )
    if not swept:
        return
    try:
        job = GlobalHydra.instance().config_loader().load_sweep_config(cfg, overrides)
        check_ranges(job, skip=swept)  # what every job shares; a swept value fails its own job
    except ConfigError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        detail = " ".join(ln for ln in lines[:3] if not ln.startswith(("full_key", "object_type")))
        m = re.search(r"'([^']+)'", lines[0] if lines else "")
        key = m.group(1) if m else None
        what = (
            f"the swept key '{key}' is not in the config"
            if key and "override" in lines[0]
            else "a sweep value"
        )
        fail(f"{what} ({detail}); check its spelling, or prefix it with + to add a new key")
    if is_optuna(cfg) and cfg.hydra.sweeper.get("storage"):
        check_storage(cfg, swept)


def check_storage(cfg: Any, swept: list[str]) -> None:
    import optuna  # only sweeps with a storage need it; this module is imported by every process

    optuna_sqlite_stamp_fix()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    sw = cfg.hydra.sweeper
    storage, name = str(sw.storage), sw.get("study_name")
    if storage.startswith("sqlite:///"):
        path = storage[len("sqlite:///") :]
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            with open(path, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    fail(f"hydra.sweeper.storage={storage}: {path} is not an SQLite file (an Optuna study)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        summaries = optuna.get_all_study_summaries(storage)
    except Exception as e:  # noqa: BLE001
        fail(
            f"hydra.sweeper.storage={storage} cannot be opened as an Optuna storage: {' '.join(str(e).split())[:300]}"
        )
        return
    names = [s.study_name for s in summaries]
    if not names:
        return
    if name is None or name not in names:
        fail(
            f"hydra.sweeper.storage={storage} holds the study {', '.join(repr(n) for n in names)}, not "
            f"{name!r}: resume it with hydra.sweeper.study_name=<its name> and its search space, or use a new "
            "storage file"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    ours = [d if isinstance(d, str) else d.name for d in directions(sw)]
    theirs = [d.name.lower() for d in study.directions]
    if [d.lower() for d in ours] != theirs:
        fail(
            f"the study {name!r} in {storage} was run to {'/'.join(theirs)} but this sweep asks to "
            f"{'/'.join(ours)}; use the same hydra.sweeper.direction or a new study"
        )
    keys = set()
    for t in study.get_trials(deepcopy=False):
        keys |= set(t.params)
    wanted = {k.lstrip("+~") for k in swept}
    if keys and keys != wanted:
        fail(
            f"the study {name!r} in {storage} searched {sorted(keys)} but this sweep searches {sorted(wanted)}; "
            "resume with the same search space, or use a new study_name or storage file"
        )


def directions(sw: Any) -> list[Any]:
    d = sw.get("direction", "minimize")
    return list(d) if not isinstance(d, str) and hasattr(d, "__iter__") else [d]
