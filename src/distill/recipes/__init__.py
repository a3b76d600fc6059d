"""One module per method, each with a typed `Config` and `run(config, resume=None) -> dict`."""

from distill.recipes import kd, minitron, mtt

RECIPES = {"kd": kd, "minitron": minitron, "mtt": mtt}

__all__ = ["RECIPES"]
