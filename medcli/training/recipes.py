"""Recipes: named, documented groups of training settings (``medcli train --recipe NAME``, ``recipe:`` in the
workflow's ``train:`` sections).

A recipe is applied under the options given explicitly: the value of a setting is the option's (or the
``--config`` file's), else the recipe's, else the schema default. :func:`apply_recipe` does it for a mapping of
given settings (what :func:`medcli.training.config.from_dict` receives from every entry point: the command line,
a settings file, a workflow cell). The recipe's name is recorded in ``config.json`` (``settings.recipe``) and each
value it set in ``resolved`` with the reason ``recipe NAME``; the report shows the recipe.

Adding a recipe is one :func:`register_recipe` call plus a line in ``docs/recipes.md`` and a test.

Built-in recipes:

* ``default``: the schema defaults, which are the result of the defaults study (``docs/recipes.md``,
  ``benchmarks/recipes.py``). Sets nothing.
* ``medmnist-v2``: the training protocol of the MedMNIST v2 benchmark (Yang et al., "MedMNIST v2 - A large-scale
  lightweight benchmark for 2D and 3D biomedical image classification", Scientific Data 10, 41, 2023; code
  ``MedMNIST/experiments/MedMNIST2D/train_and_eval_pytorch.py``): Adam, lr 1e-3, no weight decay, batch 128, 100
  epochs, lr x0.1 at epochs 50 and 75, no warm-up, no augmentation, plain cross-entropy, the model selected by
  validation AUC over all 100 epochs (no early stopping), no weight averaging. Not reproduced: the network
  (MedMNIST's ResNet-18 for 28 px inputs is CIFAR-style, a 3x3 stride-1 stem without max-pooling, about 20x the
  compute at 28 px; medcli's ``resnet18`` is torchvision's ImageNet network), inputs normalised with mean 0.5 /
  std 0.5 (medcli uses the training fold's statistics for random weights, an affine change the first BatchNorm
  absorbs), and the paper's code kept the last epoch by mistake (``best_model = model``), where medcli keeps the
  epoch it selected.
* ``quick``: a smoke run (2 epochs, no averaging) to check that a dataset and a configuration go through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import Registry


@dataclass(frozen=True)
class Recipe:
    """A named group of settings: ``settings`` maps setting names to values; ``source`` says where it comes from."""

    description: str
    settings: dict = field(default_factory=dict)
    source: str = ""


_RECIPES: Registry[Recipe] = Registry("recipe", sort=False)


def register_recipe(name: str, recipe: Recipe, *, overwrite: bool = False) -> Recipe:
    """Register ``recipe`` under ``name``; its settings are checked against the schema now (an unknown setting or
    a bad value raises :class:`~medcli.errors.MedcliError` naming the recipe)."""
    from .config import check_keys, check_value

    where = f"recipe {name}: "
    check_keys(recipe.settings, where)
    if "recipe" in recipe.settings:
        raise ValueError(f"{where}a recipe cannot set another recipe")
    checked = {k: check_value(k, v, f"{where}{k}") for k, v in recipe.settings.items()}
    return _RECIPES.add(name, Recipe(recipe.description, checked, recipe.source), overwrite=overwrite)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name raises :class:`~medcli.errors.MedcliError` listing the known ones."""
    return _RECIPES.get(name)


def list_recipes() -> list[str]:
    return _RECIPES.names()


def apply_recipe(given: dict) -> dict:
    """``given`` (the settings given explicitly, any subset) on top of its recipe's settings (``given["recipe"]``,
    default ``default``): ``{**recipe.settings, **given}``. Raises :class:`~medcli.errors.MedcliError` for an
    unknown recipe."""
    recipe = get_recipe(given.get("recipe") or "default")
    return {**recipe.settings, **given}


def recipe_reasons(cfg) -> dict[str, str]:
    """``{setting: "recipe NAME"}`` for the settings of ``cfg`` (a :class:`~medcli.training.config.TrainConfig`)
    that its recipe set, i.e. that were not given explicitly (``cfg.given``): what ``config.json`` records as the
    reason of a value."""
    recipe = get_recipe(cfg.recipe)
    given = cfg.given or frozenset()
    return {k: f"recipe {cfg.recipe}" for k in recipe.settings if k not in given}


register_recipe("default", Recipe("The defaults, chosen by the defaults study (docs/recipes.md): nothing changed.",
                                  source="docs/recipes.md; benchmarks/recipes.py"))
register_recipe("medmnist-v2", Recipe(
    "The MedMNIST v2 benchmark's protocol: Adam 1e-3, batch 128, 100 epochs, lr x0.1 at epochs 50 and 75, no augmentation, "
    "plain cross-entropy, the epoch with the best validation AUC.",
    {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128, "epochs": 100, "schedule": "step", "warmup_epochs": 0.0,
     "augment": False, "class_weights": False, "label_smoothing": 0.0, "monitor": "auc", "patience": 100, "ema_epochs": 0.0},
    source="Yang et al., Scientific Data 10, 41 (2023); MedMNIST/experiments/MedMNIST2D/train_and_eval_pytorch.py",
))
register_recipe("quick", Recipe("A smoke run: 2 epochs, no weight averaging; checks that data and configuration go through, "
                                "not a result.", {"epochs": 2, "patience": 2, "ema_epochs": 0.0, "warmup_epochs": 0.0}))
