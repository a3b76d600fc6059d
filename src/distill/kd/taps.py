"""Capture named submodules' outputs (or inputs) with forward hooks; models are never edited."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError


def find_module(model: nn.Module, path: str, owner: str = "model") -> nn.Module:
    """`model.get_submodule(path)`, with close matches in the error when the path is wrong."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else f"; it has: {', '.join(names[:12])}"
        raise DistillError(f"{owner} has no submodule {path!r}{hint}") from None


def split_io(spec: str) -> tuple[str, str]:
    """'layer3' -> ('layer3', 'output'); 'layer3:input' -> ('layer3', 'input')."""
    path, _, io = spec.partition(":")
    io = io or "output"
    if io not in ("output", "input"):
        raise DistillError(f"tap {spec!r}: say ':input' or ':output' after the module path")
    return path, io


class Taps:
    """Forward hooks on `model` that store each named submodule's output (or first input).

    `taps.values` maps each spec to the tensor of the latest forward; `clear()` empties it.
    Use as a context manager or call `remove()`.
    """

    def __init__(self, model: nn.Module, specs: Iterable[str], owner: str = "model") -> None:
        self.values: dict[str, Any] = {}
        self._handles = []
        for spec in dict.fromkeys(specs):
            path, io = split_io(spec)
            module = find_module(model, path, owner)
            self._handles.append(module.register_forward_hook(self._hook(spec, io)))

    def _hook(self, spec: str, io: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            value = args[0] if io == "input" else output
            # HF modules often return tuples (hidden, attn, ...): keep the first tensor
            if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
                value = value[0]
            self.values[spec] = value

        return hook

    def clear(self) -> None:
        self.values = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
