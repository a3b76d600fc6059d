"""Loading a user's Hugging Face directory strictly: every weight the model has must come from the files, and every
weight in the files must fit the model. transformers initialises what is missing at random and only logs it; a
teacher that is half random would then train students for hours and exit 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.errors import DistillError


def read_config(d: Path) -> Any:
    """The directory's config (AutoConfig), or one line saying why it cannot be read."""
    from transformers import AutoConfig

    try:
        json.loads((d / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DistillError(f"{d / 'config.json'} is not a readable JSON config ({_first_line(e)})") from None
    try:
        return AutoConfig.from_pretrained(d)
    except (ValueError, KeyError, OSError) as e:
        raise DistillError(f"{d / 'config.json'}: transformers cannot read it ({_first_line(e)})") from None


def load_pretrained(auto_cls: Any, d: Path, new_ok: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """`auto_cls.from_pretrained(d, **kwargs)`, refused in one line when the files lack weights the model has
    (except those whose names start with one of `new_ok`: a head the caller means to train), hold weights it has no
    place for, or hold weights of another shape."""
    from transformers.utils import logging as hf_logging

    read_config(d)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checks below say what matters, in one line
    try:
        model, info = auto_cls.from_pretrained(d, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise DistillError(f"{d} cannot be loaded as a model ({_first_line(e)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(new_ok)]
    mismatched = [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", [])]
    problems = [
        (missing, "lacks weights the model has"),
        (info.get("unexpected_keys", []), "holds weights the model has no place for"),
        (mismatched, "holds weights of another shape"),
    ]
    for names, what in problems:
        if names:
            kind = type(model).__name__
            raise DistillError(
                f"{d} {what} ({kind}, as its config.json says): {_names(names)}; "
                "check that config.json and the weight files belong together"
            )
    return model


def load_tokenizer_of(d: Path) -> Any:
    """The directory's tokenizer, or one line saying it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(d)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DistillError(f"{d} has no usable tokenizer ({_first_line(e)})") from None


def _names(names: list[str], most: int = 4) -> str:
    shown = ", ".join(sorted(names)[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
