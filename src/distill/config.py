"""YAML -> typed (pydantic) configs, dotted `key.sub=value` overrides, one clear line per bad field."""

from __future__ import annotations

import importlib
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from distill.errors import ConfigError

C = TypeVar("C", bound=BaseModel)
_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, a number is
    never a boolean (`batch_size=true` is not 1) and never nan or inf."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        for name, value in data.items() if isinstance(data, dict) else ():
            field = cls.model_fields.get(name)
            if field is not None and isinstance(value, bool):
                kinds = set(typing.get_args(field.annotation)) or {field.annotation}
                if kinds & {int, float} and bool not in kinds:
                    raise ValueError(f"{name} = {str(value).lower()}: expected a number, not a boolean")
        return data


def where_field(default: Any, description: str, **constraints: Any) -> Any:
    """A Field that says where or how to reach something, not what the run computes (a server's URL, its
    timeout): a resumed run may be given a new value (see distill.context.unchanged)."""
    return Field(default, description=description, json_schema_extra={"may_change_on_resume": True}, **constraints)


def may_change_on_resume(cfg: BaseModel, prefix: str = "") -> set[str]:
    """The dotted paths of cfg's where_field()s, nested sections included."""
    paths = set()
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("may_change_on_resume"):
            paths.add(prefix + name)
        elif isinstance(value, BaseModel):
            paths |= may_change_on_resume(value, f"{prefix}{name}.")
    return paths


def import_dotted(name: str, known: dict[str, Any], what: str, example: str) -> Any:
    """`known[name]`, or the object a dotted path names ('pkg.module:attr' or 'pkg.module.attr'): how a user
    brings their own model class or loss function. One-line ConfigError when it is neither."""
    if name in known:
        return known[name]
    module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name:
        raise ConfigError(f"{what} {name!r} is neither one of {sorted(known)} nor a dotted path '{example}'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what} {name!r} cannot be imported: {e}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (['a', 'b'], 3); the value is read as YAML so numbers, lists and null work."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _SCIENTIFIC.match(value):
        value = float(value)  # YAML 1.1 reads 3e-4 as a string
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `data[path[0]][path[1]]... = value`; list items are addressed by index (`objective.0.weight`)."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, path[: i + 1])
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, path)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"{'.'.join(path)}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def _list_item(node: list, part: str, path: list[str]) -> Any:
    return node[_list_index(node, part, path)]


CONFIGS = Path(__file__).resolve().parent / "configs"  # the named configs, shipped inside the package


def named_configs(recipe: str) -> list[str]:
    """The names of the configs shipped for `recipe` (`distill ls`)."""
    return sorted(p.stem for p in (CONFIGS / recipe).glob("*.yaml"))


def config_path(name: str | Path, recipe: str | None = None, near: Path | None = None) -> Path:
    """A config file: a path that exists, else a named config of `recipe` (`hinton` or `hinton.yaml`)."""
    p = Path(name)
    candidates = [p]
    if near is not None:  # a base named beside the file that names it
        candidates += [near / p, near / f"{p.name}.yaml"]
    if recipe is not None and p.parent == Path(".") and p.suffix in ("", ".yaml", ".yml"):
        candidates.append(CONFIGS / recipe / f"{p.stem if p.suffix else p.name}.yaml")
    for c in candidates:
        if c.is_file():
            return c
    names = f"; the named configs of {recipe}: {named_configs(recipe)}" if recipe and named_configs(recipe) else ""
    raise ConfigError(f"config file {name} does not exist{names}")


class _UniqueKeys(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last, silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} is given twice in one mapping (the first would be dropped)", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeys) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {p} is not valid YAML{where}: {what}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def read_config(name: str | Path, recipe: str | None = None, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's values; `base: NAME` in it puts another config (a file or a named one) underneath."""
    path = config_path(name, recipe, _seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        raise ConfigError(f"config file {path.name} is its own base (through {[p.name for p in _seen]})")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: base must name one config file, got {base!r}")
    return merge(read_config(base, recipe, (*_seen, path)), data)


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = (), recipe: str | None = None
) -> C:
    """Build `cls` from an optional config (a YAML path, or a named config of `recipe`) plus dotted overrides."""
    data = read_config(path, recipe) if path else {}
    data = with_defaults(cls, data, unions=False)  # so that overrides can address fields the file leaves out
    for key, value in map(parse_override, overrides):
        apply_override(data, key, value)
    return validate(cls, with_defaults(cls, data))  # and complete the sections the overrides gave in part


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, mappings merged key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def with_defaults(
    cls: type[BaseModel], data: dict[str, Any], defaults: BaseModel | None = None, unions: bool = True
) -> dict[str, Any]:
    """Fill the fields `data` leaves out with the defaults in effect, so overrides can address them.

    A section given in part is completed from that section's default (the recipe's, e.g. its
    `train`), recursively, and so is each item of a list of sections; free dicts are kept whole.
    A union told apart by `kind` (e.g. `teacher`) is completed from its default only when it names
    the default's kind or none (`unions=False` leaves it alone, so `teacher.kind=server` plus the
    server's fields can replace a local default).
    """
    out = dict(data)
    for name, field in cls.model_fields.items():
        if defaults is not None:
            value = getattr(defaults, name)
        elif field.is_required():
            continue
        else:
            value = field.get_default(call_default_factory=True)
        sub, item = _section_type(field.annotation), _list_item_section(field.annotation)
        if field.discriminator is not None:
            default = TypeAdapter(Any if field.annotation is None else field.annotation).dump_python(value, mode="json")
            given = out.get(name, {})
            if not unions or not isinstance(given, dict):
                continue
            kind = given.get(field.discriminator, default[field.discriminator])
            out[name] = merge(default, given) if kind == default[field.discriminator] else given
        elif name not in out:
            out[name] = TypeAdapter(Any if field.annotation is None else field.annotation).dump_python(
                value, mode="json"
            )
        elif sub is not None and isinstance(out[name], dict):
            out[name] = with_defaults(sub, out[name], value if isinstance(value, sub) else None)
        elif item is not None and isinstance(out[name], list):  # each item completed from its class's defaults
            out[name] = [with_defaults(item, x) if isinstance(x, dict) else x for x in out[name]]
    return out


def validate(cls: type[C], data: dict[str, Any]) -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None


def format_errors(e: ValidationError) -> str:
    """One line per bad field: `config error: train.lr = -1: Input should be greater than 0`."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        if err["type"] == "extra_forbidden":
            lines.append(f"config error: unknown field {loc!r}")
            continue
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        msg = err["msg"].removeprefix("Value error, ")
        if isinstance(value, dict) and loc:  # a section-level check names its field in the message
            lines.append(f"config error: {loc}: {msg}")
        else:
            lines.append(f"config error: {loc} = {shown}: {msg}" if loc else f"config error: {msg}")
    return "\n".join(lines)


def dump(config: BaseModel) -> str:
    """The resolved config as YAML (what a run saves and `--resume` reads back)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def describe(
    cls: type[BaseModel], prefix: str = "", defaults: Any = None, _open: tuple[type, ...] = ()
) -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, description) of every field; sections and lists of sections expanded.

    Defaults are those in effect: a section's own default instance wins over its class defaults. A section
    that holds itself (a mixture's `parts`, each a corpus) is expanded once and then named, not repeated.
    """
    rows = []
    _open = (*_open, cls)
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(defaults, name) if defaults is not None else _default(field)
        sub = _section_type(field.annotation)
        item = _list_item_section(field.annotation)
        if sub is not None:
            rows.append((key, "section", "", field.description or ""))
            rows += describe(sub, key + ".", value, _open)
        elif (kinds := _kinds(field)) is not None:  # each kind's fields, marked with the kind they belong to
            variants, disc = kinds
            rows.append((key, "section", "", field.description or ""))
            for variant in variants:
                kind = variant.model_fields[disc].default
                example = value if isinstance(value, variant) else None
                rows += [
                    (k, t, d, f"[{disc}={kind}] {x}".strip())
                    for k, t, d, x in describe(variant, key + ".", example, _open)
                ]
        elif item is not None:
            shown = "" if value is None else _short(value)
            desc = field.description or ""
            if item in _open:  # a section that holds itself: its items take the fields listed above
                desc += f" (each item: the fields of {prefix.rstrip('.') or 'the config'})"
            rows.append((key, f"list of {item.__name__}", shown, desc))
            if item not in _open:
                rows += describe(item, key + ".N.", None, _open)
        else:
            shown = "" if field.is_required() and defaults is None else _short(value)
            if isinstance(value, BaseModel) or (field.is_required() and not isinstance(value, (int, float, str))):
                shown = ""
            rows.append((key, _type_name(field.annotation), shown, field.description or ""))
    return rows


def _kinds(field: Any) -> tuple[tuple[type[BaseModel], ...], str] | None:
    """(the kinds, the discriminator) of a discriminated union field, also one that may be null."""
    if field.discriminator is not None:
        return typing.get_args(field.annotation), field.discriminator
    for arg in typing.get_args(field.annotation):  # Annotated[A | B, Field(discriminator=...)] | None
        if typing.get_origin(arg) is typing.Annotated:
            inner, *meta = typing.get_args(arg)
            disc = next((m.discriminator for m in meta if getattr(m, "discriminator", None)), None)
            if disc is not None:
                return typing.get_args(inner), disc
    return None


def _default(field: Any) -> Any:
    return None if field.is_required() else field.get_default(call_default_factory=True)


def _list_item_section(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (arg,) = typing.get_args(annotation)
        return _section_type(arg)
    return None


def _section_type(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")


def _short(value: Any) -> str:
    value = TypeAdapter(Any).dump_python(value, mode="json")
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return text if len(text) <= 60 else text[:57] + "..."


class RuntimeConfig(Section):
    """Where a run goes and how it runs."""

    output_dir: str = Field("runs", description="parent folder of run directories")
    run_name: str | None = Field(None, description="run directory name (default: <recipe>-<time>)")
    seed: int = Field(0, ge=0, lt=2**32, description="seeds every random stream of the run")
    precision: Literal["no", "bf16", "fp16", "auto"] = Field(
        "no",
        description="mixed precision: bf16 (a GPU, or a CPU with AVX-512 BF16 / AMX), fp16 (a GPU), "
        "auto (bf16 where it pays: a GPU that has it, a CPU with AMX; else no)",
    )
    cpu: bool = Field(False, description="stay on the CPU even when a GPU is present")
    keep_freed_memory: bool = Field(
        True,
        description="on the CPU, keep freed memory in the process instead of returning it to the kernel "
        "(glibc mallopt): no page faults for every step's activations, up to ~1 GiB more resident memory",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML reads a bare `no` (run.precision=no) as false
