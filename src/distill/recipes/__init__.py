"""One module per method, each with a typed `Config` and `run(config, resume=None) -> dict`."""

from distill.recipes import kd

RECIPES = {"kd": kd}

__all__ = ["RECIPES"]
