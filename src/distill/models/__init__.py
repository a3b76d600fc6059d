"""Model specs: a bundled architecture by name, or a user's class by dotted import path."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from distill.config import Section, import_dotted
from distill.errors import DistillError
from distill.models.recognizer import Recognizer
from distill.models.vision import MLP, ConvNet, DCConvNet, ResNet

ARCHS: dict[str, type[nn.Module]] = {
    "convnet": ConvNet,
    "mlp": MLP,
    "dc_convnet": DCConvNet,
    "resnet": ResNet,
    "recognizer": Recognizer,
}


class ModelSpec(Section):
    """Which network, its constructor arguments, and optional weights to start from."""

    arch: str = Field("convnet", description=f"one of {sorted(ARCHS)} or a dotted path 'pkg.module:Class'")
    args: dict[str, Any] = Field(default_factory=dict, description="constructor keyword arguments")
    checkpoint: str | None = Field(None, description="weights to load (.safetensors or a .pt state dict)")

    @field_validator("arch")
    @classmethod
    def _importable(cls, arch: str) -> str:
        try:
            resolve_class(arch)
        except DistillError as e:
            raise ValueError(str(e)) from None
        return arch


def resolve_class(arch: str) -> type[nn.Module]:
    obj = import_dotted(arch, ARCHS, "model arch", "pkg.module:Class")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)) and not callable(obj):
        raise DistillError(f"model arch {arch!r} is not an nn.Module class or factory")
    return obj


def build_model(spec: ModelSpec, **defaults: Any) -> nn.Module:
    """Instantiate `spec`; `defaults` (e.g. num_classes, in_channels) fill arguments the class takes."""
    cls = resolve_class(spec.arch)
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in defaults.items() if k in params or takes_any}
    kwargs.update(spec.args)
    try:
        model = cls(**kwargs)
    except TypeError as e:
        raise DistillError(f"model {spec.arch!r} rejected its arguments {sorted(kwargs)}: {e}") from None
    if spec.checkpoint:
        load_weights(model, spec.checkpoint)
    return model


def load_weights(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        raise DistillError(f"checkpoint {path} is a directory; give a .safetensors or .pt file of weights")
    if not path.is_file():
        raise DistillError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else state
    except Exception as e:  # noqa: BLE001 - a file that is not weights fails in many ways inside the reader
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise DistillError(f"checkpoint {path} is not a weights file ({detail})") from None
    if not isinstance(state, dict):
        raise DistillError(f"checkpoint {path} holds a {type(state).__name__}, not a mapping of named tensors")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise DistillError(f"checkpoint {path} does not fit the model: {detail}") from None
    if missing or unexpected:
        raise DistillError(
            f"checkpoint {path} does not fit the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )


MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", "token_type_ids", "pixel_values", "decoder_input_ids")


def call_model(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Run a model on a batch: `inputs` for plain nets, HF keyword inputs otherwise; return logits."""
    if "inputs" in batch:
        out = model(batch["inputs"])
    else:
        out = model(**{k: v for k, v in batch.items() if k in MODEL_KEYS})
    return getattr(out, "logits", out)


def check_accepts(model: nn.Module, sample: Tensor, what: str) -> None:
    """One forward of `sample` (eval mode, no grad); a clear error when the net cannot take such inputs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample)
    except (RuntimeError, ValueError, TypeError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DistillError(f"{what} does not take inputs of shape {tuple(sample.shape[1:])}: {detail}") from None
    finally:
        model.train(was_training)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ARCHS",
    "MLP",
    "ConvNet",
    "DCConvNet",
    "ResNet",
    "ModelSpec",
    "build_model",
    "call_model",
    "check_accepts",
    "count_parameters",
    "load_weights",
    "resolve_class",
]
