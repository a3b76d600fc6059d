"""One module per method, each with a typed `Config` and `run(config, resume=None) -> dict`."""

from distill.recipes import kd, label, minitron, mtt, weaklabel

RECIPES = {"kd": kd, "minitron": minitron, "mtt": mtt, "label": label, "weaklabel": weaklabel}

__all__ = ["RECIPES"]
