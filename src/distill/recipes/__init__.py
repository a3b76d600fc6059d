"""One module per method, each with a typed `Config` and `run(config, resume=None) -> dict`."""

from distill.recipes import kd, minitron

RECIPES = {"kd": kd, "minitron": minitron}

__all__ = ["RECIPES"]
