"""The mutation check's own parts (tools/mutate.py): the mutants it plants, and that the source always comes back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import mutate  # noqa: E402
from mutants import Named, generate, named_mutant  # noqa: E402
from mutation_targets import MODULES, NAMED, NAMED_ONLY  # noqa: E402

SOURCE = '''"""A docstring with 1 + 2 in it."""
TABLE = {"a": 1.5}


def f(x, items, eps=1e-4):
    assert x > 0, "never mutated"
    y = -x + 2 * x
    if x <= 3 and x is not None:
        return min(items[-1], y / eps)
    return "text " + str(x)
'''


def edits(source: str) -> set[tuple[int, str]]:
    return {(m.line, m.edit) for m in generate("m.py", source)}


def test_generated_mutants_cover_every_operator_kind_and_skip_text_asserts_and_tables():
    found = edits(SOURCE)
    expected = {
        (5, "`1e-4` -> `5e-05`"),  # a float halved
        (7, "`-x` -> `x`"),  # a sign dropped
        (7, "`-x + 2 * x` -> `-x - 2 * x`"),  # an operator swapped
        (7, "`-x + 2 * x` -> `-x`"),  # a term dropped
        (7, "`2` -> `3`"),  # an integer + 1
        (7, "`2 * x` -> `2 / x`"),
        (8, "`x <= 3` -> `x < 3`"),  # a comparison's boundary
        (8, "`x is not None` -> `x is None`"),
        (8, "`x <= 3 and x is not None` -> `x <= 3 or x is not None`"),
        (9, "`min(items[-1], y / eps)` -> `max(items[-1], y / eps)`"),
        (9, "`-1` -> `0`"),  # the last -> the first
        (9, "`y / eps` -> `y * eps`"),
        (8, "`3` -> `4`"),
    }
    assert expected <= found
    assert all(line not in (1, 2, 6, 10) for line, _ in found)  # docstring, data table, assert, text
    assert len(found) == len(generate("m.py", SOURCE))  # no two mutants make the same file


def test_generation_is_deterministic_and_every_mutant_compiles():
    first, second = generate("m.py", SOURCE), generate("m.py", SOURCE)
    assert [(m.start, m.end, m.new) for m in first] == [(m.start, m.end, m.new) for m in second]
    for m in first:
        compile(SOURCE[:m.start] + m.new + SOURCE[m.end:], "m.py", "exec")


def test_a_named_mutant_is_found_in_its_function_only():
    named = Named("n", "m.py", "f", "y / eps", "y")
    mutant = named_mutant(named, SOURCE)
    assert (mutant.line, mutant.edit, mutant.name) == (9, "`y / eps` -> `y`", "n")
    assert "not found" in named_mutant(Named("n", "m.py", "g", "y / eps", "y"), SOURCE)
    assert "not found" in named_mutant(Named("n", "m.py", "f", "z / eps", "y"), SOURCE)
    assert named_mutant(Named("n", "m.py", "f", "a", "b", retired="gone"), SOURCE) == "retired: gone"


def test_every_named_mutant_targets_a_mapped_module():
    assert {n.path for n in NAMED} <= set(MODULES) | set(NAMED_ONLY)
    assert len({n.name for n in NAMED}) == len(NAMED)


def test_planted_source_comes_back_after_an_exception_and_after_a_kill(tmp_path, monkeypatch):
    monkeypatch.setattr(mutate, "ROOT", tmp_path)
    monkeypatch.setattr(mutate, "BACKUP_DIR", tmp_path / "backup")
    target = tmp_path / "m.py"
    target.write_text(SOURCE)
    original_mtime = target.stat().st_mtime_ns
    mutant = generate("m.py", SOURCE)[0]
    with pytest.raises(KeyboardInterrupt):
        with mutate.Planted(mutant):
            assert target.read_text() != SOURCE and target.stat().st_mtime_ns != original_mtime
            raise KeyboardInterrupt
    assert target.read_text() == SOURCE and target.stat().st_mtime_ns == original_mtime
    assert not (tmp_path / "backup").exists()
    # A run killed outright leaves the backup; the next run puts the original back first.
    planted = mutate.Planted(mutant).__enter__()
    assert target.read_text() != SOURCE and planted.original == SOURCE.encode()
    mutate.restore_leftovers()
    assert target.read_text() == SOURCE and not (tmp_path / "backup").exists()
