"""Compress stage: prune (structured or unstructured), distill, quantize, chained by a recipe.

    from edgekit.compress import compress_model, load_recipe
    result = compress_model(model, load_recipe("r.toml"), "fashion-mnist")
    result.save("out/")                 # model.pt, model.pt2, report.json, recipe.json

Imports torch only when a function runs.
"""

from __future__ import annotations

from edgekit.compress.compressed import CompressedModel, compress_model  # noqa: F401
from edgekit.compress.recipe import Recipe, load_recipe, parse_recipe, recipe_from_toml  # noqa: F401

__all__ = ["CompressedModel", "compress_model", "Recipe", "load_recipe", "parse_recipe", "recipe_from_toml"]
