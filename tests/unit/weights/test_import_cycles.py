"""No import cycle through vit_ft.weights, function-level imports included (grimp's graph holds every
import statement): the loader, the readers and LoRA hand each other functions instead."""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp")


def _cycle(graph, start: str) -> list[str] | None:
    """One import path from ``start`` back to itself, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        mod, path = stack.pop()
        for nxt in graph.find_modules_directly_imported_by(mod):
            if nxt == start:
                return [*path, nxt]
            if nxt.startswith("vit_ft.") and nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycle_through_weights():
    graph = grimp.build_graph("vit_ft", cache_dir=None)
    mods = sorted(m for m in graph.modules if m == "vit_ft.weights" or m.startswith("vit_ft.weights."))
    assert "vit_ft.weights.load" in mods and "vit_ft.weights.families.deit" in mods
    cycles = [" -> ".join(c) for m in mods if (c := _cycle(graph, m))]
    assert not cycles, cycles[0]
