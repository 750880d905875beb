"""The README cannot go stale unnoticed.

- Its Layout section names every module of ``src/vit_ft`` (every ``src/vit_ft/**/*.py`` except the
  packages' ``__init__.py``; ``__main__.py`` files are commands and are included) on a line of its own,
  ``- `path` — what it is for``, and every path the section names exists.
- Every ``python train.py ...`` / ``python eval.py ...`` command it shows (in code blocks, also under
  torchrun and srun, and in inline code) composes with Hydra's compose API: the groups, keys and
  ``hydra.*`` settings it uses exist. Placeholders (``<run>``) become a word; of a ``-m`` sweep's swept
  values the first is composed, and range sweeps (``interval(...)``) are left out.
- Every ``](#anchor)`` link finds a heading.
"""

from __future__ import annotations

import ast
import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
CONFIG_OF = {"train.py": "config", "eval.py": "eval"}
SCRIPTS = (*CONFIG_OF, "predict.py", "export.py")


def _outside_fences(text: str) -> str:
    return FENCE.sub("", text)


def _section(title: str) -> str:
    """The text under ``## title`` up to the next heading of level 1 or 2."""
    text = _outside_fences(README)
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^#{{1,2}} |\Z)", text, re.S | re.M)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def _layout() -> tuple[dict[str, str], set[str]]:
    """``{path: description}`` of the Layout's ``- `path` — ...`` lines, and every path-like token named
    in its list items."""
    items, named = {}, set()
    for line in _section("Layout").splitlines():
        if not re.match(r"^\s*- ", line):
            continue
        m = re.match(r"^\s*- `([^`]+)` — (\S.*)$", line)
        if m:
            items[m.group(1)] = m.group(2)
        for token in re.findall(r"`([^`]+)`", line):
            if re.fullmatch(r"[\w./-]+", token) and ("/" in token or token.endswith(".py")):
                named.add(token)
    return items, named


def test_layout_names_every_module_and_nothing_that_is_gone():
    items, named = _layout()
    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "src" / "vit_ft").rglob("*.py")
        if p.name != "__init__.py"
    )
    missing = [m for m in modules if m not in items]
    stale = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing and not stale, (
        "README.md's Layout section is out of date.\n"
        + (
            "Missing (add a line '- `path` — what it is for'):\n  " + "\n  ".join(missing) + "\n"
            if missing
            else ""
        )
        + ("Stale (no such path; remove or rename):\n  " + "\n  ".join(stale) if stale else "")
    )


def _commands() -> list[tuple[str, list[str]]]:
    """``(script, arguments)`` of every train.py / eval.py / predict.py / export.py command the README shows."""
    lines = []
    for block in FENCE.findall(README):
        lines += block.replace("\\\n", " ").splitlines()
    lines += [c for c in re.findall(r"`([^`\n]+)`", _outside_fences(README)) if c.startswith("python ")]
    commands = []
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        scripts = [i for i, w in enumerate(words) if w in SCRIPTS]
        if scripts and {"python", "torchrun"} & set(words[: scripts[0]]):
            commands.append((words[scripts[0]], words[scripts[0] + 1 :]))
    return commands


def _overrides(args: list[str]) -> list[str]:
    """The Hydra overrides of a command line: flags and ``...`` dropped, placeholders filled in, a
    sweep's first choice kept."""
    out, skip = [], False
    for arg in args:
        if skip or arg == "...":
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg == "--cfg"
            continue
        out.append(re.sub(r"<[^<>]+>", "placeholder", arg))
    kept = []
    for o in OverridesParser.create().parse_overrides(out):
        if not o.is_sweep_override():
            kept.append(o.input_line)
        elif o.is_choice_sweep():
            kept.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
    return kept


def test_commands_found():
    """The command extraction finds the recipes (so the compose test below cannot pass empty)."""
    found = {(s, " ".join(a)) for s, a in _commands()}
    assert ("train.py", "experiment=quickstart") in found
    assert ("train.py", "data=imagefolder data.root=/path/to/images") in found
    assert any(s == "train.py" and "trainer.num_nodes=2" in a for s, a in found)  # torchrun, srun
    assert any(s == "eval.py" for s, _ in found)
    assert len(found) >= 40


@pytest.mark.parametrize("script", sorted(CONFIG_OF))
def test_every_command_composes(script):
    commands = sorted({tuple(_overrides(a)) for s, a in _commands() if s == script})
    failures = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for overrides in commands:
            try:
                compose(CONFIG_OF[script], overrides=list(overrides), return_hydra_config=True)
            except Exception as e:  # every failure is listed below
                failures.append(f"python {script} {' '.join(overrides)}\n    {type(e).__name__}: {e}")
    assert not failures, "README commands that do not compose:\n" + "\n".join(failures)


def _dataclass_fields(path: str, name: str) -> set[str]:
    """The annotated fields of class ``name`` in ``path``, read from the source (importing the task would
    import torch, Lightning and timm)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def test_predict_and_export_options_exist():
    """predict.py and export.py take a dataclass config: every ``key=`` the README shows is a field of it."""
    known = {
        "predict.py": _dataclass_fields("src/vit_ft/tasks/predict.py", "PredictConfig"),
        "export.py": _dataclass_fields("src/vit_ft/tasks/export.py", "ExportConfig"),
    }
    shown = [(s, a) for s, a in _commands() if s in known]
    assert {s for s, _ in shown} == set(known) and "weights" in known["predict.py"]
    unknown = [
        f"{s} {arg}" for s, args in shown for arg in args if "=" in arg and arg.split("=")[0] not in known[s]
    ]
    assert not unknown, f"README options these commands do not have: {unknown}"


def test_named_files_and_modules_exist():
    """Files the README points to (tests, benchmarks, configs, sources) and ``python -m vit_ft...``
    commands are there."""
    paths = set(re.findall(r"(?<![\w/])((?:tests|benchmarks|conf|src)/[\w./-]+\.(?:py|yaml))", README))
    paths |= {f"benchmarks/{b}" for b in re.findall(r"`(bench_\w+\.py)", README)}
    gone = sorted(p for p in paths if not (ROOT / p).exists())
    for module in set(re.findall(r"python -m (vit_ft[\w.]*)", README)):
        base = ROOT / "src" / module.replace(".", "/")
        if not (base.with_suffix(".py").exists() or (base / "__main__.py").exists()):
            gone.append(f"python -m {module}")
    assert len(paths) >= 10 and not gone, f"README names what is not there: {gone}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_section_link_finds_its_heading():
    headings = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", _outside_fences(README), re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert links, "no section links found"
    assert not sorted(links - headings), f"links to no heading: {sorted(links - headings)}"
