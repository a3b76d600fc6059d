"""Files inside installed packages (the offline models and data sets), found without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from distill.errors import DistillError


def package_path(package: str, rel: str, what: str) -> Path:
    """`rel` inside `package`'s folder; a clear error naming the package when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(f"{what} is not installed; run `make data` (pip package {package})")
    return Path(spec.submodule_search_locations[0]) / rel
