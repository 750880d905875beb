"""probe.* settings (issue 5): validated per mode, with one-line errors."""

from __future__ import annotations

import pytest

from vit_ft.errors import ConfigError
from vit_ft.probe.settings import FewshotSettings, LinearProbeSettings


@pytest.mark.parametrize(
    "cls,probe,message",
    [
        (
            LinearProbeSettings,
            {"shot": 5},
            "probe.shot is not a setting of probe.mode=linear (known: ['augment', 'batchnorm', 'cache', "
            "'cache_dir', 'extract_batch_size', 'features', 'mode', 'on_bad_cache'])",
        ),
        (
            FewshotSettings,
            {"mode": "fewshot", "shot": 5},
            "probe.shot is not a setting of probe.mode=fewshot (known: ['cache', 'cache_dir', 'eval_split', "
            "'extract_batch_size', 'features', 'l2_reg', 'mode', 'on_bad_cache', 'seeds', 'shots'])",
        ),
        (FewshotSettings, {"batchnorm": True}, "probe.batchnorm is not a setting of probe.mode=fewshot"),
        (LinearProbeSettings, {"seeds": 3}, "probe.seeds is not a setting of probe.mode=linear"),
        (
            LinearProbeSettings,
            {"features": "avg"},
            "probe.features='avg' must be one of cls (final-norm CLS token)",
        ),
        (FewshotSettings, {"on_bad_cache": "skip"}, "probe.on_bad_cache='skip' must be error or rebuild"),
        (
            LinearProbeSettings,
            {"extract_batch_size": 0},
            "probe.extract_batch_size=0 must be a positive integer",
        ),
        (LinearProbeSettings, {"mode": "ridge"}, "probe.mode='ridge' must be linear, fewshot or knn"),
        (
            LinearProbeSettings,
            {"mode": "fewshot"},
            "probe.mode=fewshot is run by its own job, not as a linear probe",
        ),
        (FewshotSettings, {"mode": "linear"}, "probe.mode=linear is trained by train.py"),
        (FewshotSettings, {"shots": [0, 5]}, "probe.shots=[0, 5] must be a list of positive integers"),
        (FewshotSettings, {"seeds": True}, "probe.seeds=True must be a positive integer"),
        (
            FewshotSettings,
            {"l2_reg": "best"},
            "probe.l2_reg='best' must be a positive number (default 1024) or auto",
        ),
    ],
)
def test_settings_are_validated_per_mode_with_one_line_errors(cls, probe, message):
    with pytest.raises(ConfigError) as e:
        cls.from_dict(probe)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_settings_from_a_config_node():
    s = LinearProbeSettings.from_dict({"mode": "linear", "cache_dir": "~/features", "batchnorm": True})
    assert s.batchnorm and s.cache and not s.cache_dir.startswith("~")
    f = FewshotSettings.from_dict({"mode": "fewshot", "shots": 5, "l2_reg": "auto", "cache": True})
    assert f.shots == [5] and f.seeds == 5 and f.l2_reg == "auto" and f.eval_split is None
    assert FewshotSettings.from_dict({"shots": [10, 1, 10]}).shots == [1, 10]
