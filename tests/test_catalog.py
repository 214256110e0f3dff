"""The catalog: every entry resolves to what it names, and recipes agree with their entries."""

from __future__ import annotations

import dataclasses

import pytest

from rlbench import catalog
from rlbench.errors import UserError


@pytest.mark.parametrize("registry", catalog.REGISTRIES, ids=lambda r: r.kind)
def test_every_entry_resolves_and_has_one_line_of_help(registry) -> None:
    for entry in registry.entries():
        assert entry.help and "\n" not in entry.help
        target = registry.get(entry.name)
        assert callable(target) or isinstance(target, (catalog.Recipe, catalog.Task)), entry.name
        if isinstance(target, catalog.Task):
            assert callable(target.loader) and callable(target.key) and target.clusters, entry.name


def test_recipes_agree_with_their_catalog_entries() -> None:
    for entry in catalog.ALGORITHMS.entries():
        recipe = entry.obj
        assert dataclasses.is_dataclass(recipe.params_cls)
        cls = recipe.cls
        assert cls.name == entry.name
        assert cls.Params is recipe.params_cls
        assert cls.default_reward == recipe.default_reward
        algorithm = cls(recipe.params_cls())
        assert algorithm.params.completions_per_prompt(4) in (1, 4)  # the group-size rule lives on the params


def test_unknown_names_get_did_you_mean() -> None:
    with pytest.raises(UserError, match=r"unknown task 'synthetc' \(did you mean 'synthetic'\?\)"):
        catalog.TASKS.get("synthetc")
    with pytest.raises(UserError, match="known: answer_correct"):
        catalog.rule_functions({"nonsense": 1.0})
