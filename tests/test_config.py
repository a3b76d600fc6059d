"""Typed configs: YAML + dotted overrides, and one line per bad field."""

from __future__ import annotations

import pytest

from distill.config import apply_override, describe, dump, load_config, parse_override, read_yaml
from distill.context import recipes
from distill.errors import ConfigError
from distill.recipes.kd import Config


def test_overrides_are_read_as_yaml():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("student.args.channels=[4, 8]") == (["student", "args", "channels"], [4, 8])
    assert parse_override("train.clip_grad_norm=null") == (["train", "clip_grad_norm"], None)
    assert parse_override("run.run_name=a=b") == (["run", "run_name"], "a=b")
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("train..lr=1")


def test_precision_no_typed_bare_is_no_not_false(tmp_path):
    # YAML 1.1 reads a bare `no` as false: the precision the user named must still be "no"
    assert load_config(Config, None, ["run.precision=no"]).run.precision == "no"
    f = tmp_path / "c.yaml"
    f.write_text("run: {precision: no}\n")
    assert load_config(Config, f).run.precision == "no"
    with pytest.raises(ConfigError, match="run.precision"):
        load_config(Config, None, ["run.precision=yes"])


def test_override_into_lists_by_index():
    data = {"objective": [{"weight": 1.0}, {"weight": 2.0}]}
    apply_override(data, ["objective", "1", "weight"], 0.5)
    assert data["objective"][1]["weight"] == 0.5


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 3}\nstudent: {args: {channels: [4, 4, 4]}}\n")
    cfg = load_config(Config, f, ["train.lr=0.01", "teachers.0.train.epochs=1"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.teachers[0].train.epochs) == (3, 0.01, 1)
    assert cfg.train.weight_decay == 5e-4  # the recipe's default train section, filled under the file's keys
    assert cfg.student.args == {"channels": [4, 4, 4]}  # free dicts are replaced, not merged


def test_dump_round_trips(tmp_path):
    cfg = load_config(Config, None, ["train.lr=0.01", "baseline=true"])
    f = tmp_path / "c.yaml"
    f.write_text(dump(cfg))
    assert load_config(Config, f) == cfg


@pytest.mark.parametrize(
    "override, line",
    [
        ("train.lr=0", "config error: train.lr = 0: Input should be greater than 0"),
        ("train.momentum=1.5", "config error: train.momentum = 1.5: Input should be less than 1"),
        ("data.source=imagenet", "config error: data.source = 'imagenet': Input should be 'fashion_mnist', 'mnist'"),
        ("teachers.0.nmae=x", "config error: unknown field 'teachers.0.nmae'"),
        ("objective.0.loss=kll", "config error: objective.0.loss = 'kll': loss 'kll' is neither one of ['affinity', "),
        ("objective.0.inputs=[student.logits]", "loss 'kl' takes 2 inputs, got 1"),
        ("objective.1.name=kd", "term names must be unique; repeated: ['kd']"),
        (
            "objective=[{name: a, loss: affinity, inputs: [student.pool, teacher.pool], mask: batch.m}]",
            "loss 'affinity' takes no mask",
        ),
        ("objective.0.inputs=[studnet.logits, teacher.logits]", "input 'studnet.logits' is not student.<tap>"),
        ("teachers=[]", "objective term 'kd' reads a teacher, but there is no teacher"),
    ],
)
def test_bad_values_name_field_value_and_rule(override, line):
    with pytest.raises(ConfigError) as e:
        load_config(Config, None, [override])
    text = str(e.value)
    assert line in text, text
    assert len(text.splitlines()) == 1


def test_two_bad_fields_give_two_lines():
    with pytest.raises(ConfigError) as e:
        load_config(Config, None, ["train.lr=-1", "train.batch_size=0"])
    assert len(str(e.value).splitlines()) == 2


def test_bad_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        read_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        read_yaml(bad)


def test_describe_shows_effective_defaults():
    rows = {r[0]: r for r in describe(Config)}
    assert rows["train.lr"][2] == "0.002"  # the recipe's student default, not TrainConfig's class default
    assert rows["teachers.N.train.epochs"][2] == "2"
    assert rows["objective.N.weight"][2] == "1.0"
    assert all(r[3] for r in rows.values() if r[1] != "section"), "every field has a description"


def test_shipped_configs_load():
    from conftest import ROOT

    files = sorted((ROOT / "configs" / "kd").glob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        load_config(Config, f)


REQUIRED = {"capture": {"cache": "cache-dir"}}  # fields a recipe has no default for


@pytest.mark.parametrize("recipe", sorted(recipes()))
def test_every_recipes_named_configs_load(recipe):
    from distill.config import named_configs

    names = named_configs(recipe)
    assert names, f"{recipe} ships no named config"
    for name in names:
        given = [f"{k}={v}" for k, v in REQUIRED.get(recipe, {}).items()]
        load_config(recipes()[recipe].Config, name, given, recipe=recipe)


def test_each_item_of_a_list_section_keeps_the_defaults_it_does_not_name():
    """A teacher given in part keeps its documented train defaults (epochs 2, lr 0.002, weight decay 5e-4)."""
    from distill.recipes import kd

    cfg = load_config(kd.Config, None, ["teachers=[{name: t, train: {max_steps: 7, batch_size: 16}}]"])
    train = cfg.teachers[0].train
    assert (train.max_steps, train.batch_size, train.epochs, train.lr, train.weight_decay) == (7, 16, 2, 0.002, 5e-4)
    assert cfg.teachers[0].model.args == {"channels": [32, 64, 128]}


def _partial_sections(cls, default, path=()):
    """(path, partial mapping, expected dump) for every nested section of `cls`, recursively: the partial
    mapping names one simple field (at its default value); everything else must come from the default."""
    from pydantic import BaseModel

    for name in cls.model_fields:
        value = getattr(default, name)
        item_cls = type(value[0]) if isinstance(value, list) and value and isinstance(value[0], BaseModel) else None
        if item_cls is not None and not any(f.is_required() for f in item_cls.model_fields.values()):
            # an item given in part gets its class's defaults, down to its own sections given in part
            item = item_cls()
            for sub_path, partial, _ in _partial_sections(item_cls, item):
                for key in reversed(sub_path):
                    partial = {key: partial}
                yield (*path, name), [partial], [item.model_dump(mode="json")]
        if isinstance(value, BaseModel):
            simple = next((k for k, v in value.model_dump().items() if isinstance(v, (int, float, str))), None)
            if simple is not None:
                yield (*path, name), {simple: getattr(value, simple)}, value.model_dump(mode="json")
            yield from _partial_sections(type(value), value, (*path, name))


@pytest.mark.parametrize("recipe", sorted(recipes()))
def test_every_nested_section_given_in_part_keeps_its_defaults(recipe, tmp_path):
    import yaml

    config_cls = recipes()[recipe].Config
    required = REQUIRED.get(recipe, {})
    default = load_config(config_cls, None, [f"{k}={v}" for k, v in required.items()])
    cases = list(_partial_sections(config_cls, default))
    assert cases
    for path, partial, expected in cases:
        nested = partial
        for key in reversed(path):
            nested = {key: nested}
        file = tmp_path / "partial.yaml"
        file.write_text(yaml.safe_dump({**required, **nested}))
        got = load_config(config_cls, file)
        for key in path:
            got = getattr(got, key)
        dumped = [g.model_dump(mode="json") for g in got] if isinstance(got, list) else got.model_dump(mode="json")
        assert dumped == expected, ".".join(path)
