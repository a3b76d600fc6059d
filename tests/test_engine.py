"""The training loop: schedules, accumulation, checkpoints, exact resume, and the teacher kept aside."""

from __future__ import annotations

import math
import re

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from distill.engine import Callbacks, TrainConfig, checkpoints, epoch_batches, fit, lr_lambda
from distill.kd.distiller import Distiller
from distill.kd.objective import Term
from distill.meter import SAMPLES, TOKENS
from distill.report import chart_of, write_report
from distill.run import RunDir

CE = Term(name="ce", loss="ce", inputs=["student.logits", "labels"])
KD = Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"temperature": 2.0})

CLOCK = ("time", SAMPLES, TOKENS)  # what differs between two equal runs


def toy_data(n: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return {"inputs": x, "labels": (x[:, 0] > 0).long() + (x[:, 1] > 0).long()}


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


def test_lr_schedules():
    cfg = TrainConfig(lr=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    f = lr_lambda(cfg, total_steps=12)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(12) == pytest.approx(0.1)
    lin = lr_lambda(TrainConfig(schedule="linear"), total_steps=10)
    assert lin(5) == pytest.approx(0.5)
    assert lr_lambda(TrainConfig(schedule="constant"), 10)(9) == 1.0


def test_epoch_batches_shard_disjointly_and_deterministically():
    a = epoch_batches(20, 4, seed=3, epoch=1, rank=0, world=2)
    b = epoch_batches(20, 4, seed=3, epoch=1, rank=1, world=2)
    assert [t.tolist() for t in a] == [t.tolist() for t in epoch_batches(20, 4, seed=3, epoch=1, rank=0, world=2)]
    flat_a, flat_b = torch.cat(a).tolist(), torch.cat(b).tolist()
    assert not set(flat_a) & set(flat_b) and len(flat_a) == len(flat_b) == 8
    assert torch.cat(epoch_batches(20, 4, 3, 2)).tolist() != torch.cat(epoch_batches(20, 4, 3, 1)).tolist()


def test_training_lowers_the_loss_and_logs(tmp_path, accelerator):
    run = RunDir(tmp_path / "run")
    model = Distiller(toy_model(), [CE])
    cfg = TrainConfig(epochs=20, batch_size=16, lr=1e-2, log_every=4, progress=False)
    metrics = fit(
        model,
        toy_data(),
        cfg,
        stage="s",
        run=run,
        accelerator=accelerator,
        seed=0,
        eval_fn=lambda m: {"n_params": float(sum(p.numel() for p in m.parameters()))},
    )
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    assert losses[-1] < 0.6 * losses[0]
    assert metrics == {"n_params": 163.0}
    assert (run.path / "s" / "model.safetensors").is_file() and (run.path / "s" / "done.json").is_file()
    assert {"lr", "ce", SAMPLES, "step"} <= set(run.metrics()[0])
    # each logged key on its chart: throughput never on the (log-scale) loss chart
    charts = {k: chart_of(k) for r in run.metrics() for k in r}
    assert {k for k, c in charts.items() if c == "loss"} == {"loss", "ce"}
    assert charts[SAMPLES] == "speed" and charts["eval/n_params"] == "eval" and charts["lr"] == "lr"
    (run.path / "config.yaml").write_text("{}\n")  # fit alone writes no config; the report wants a run
    assert "plots/s-speed.png" in write_report(run.path).read_text()


def test_gradient_accumulation_matches_one_big_batch(tmp_path, accelerator):
    """2 micro-batches of 8 = 1 batch of 16 (same samples, same order); no dropout so math is equal."""
    finals = []
    for batch, accum in [(16, 1), (8, 2)]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        cfg = TrainConfig(max_steps=3, batch_size=batch, grad_accum=accum, optimizer="sgd", lr=0.1, progress=False)
        fit(
            Distiller(net, [CE]),
            toy_data(),
            cfg,
            stage="s",
            run=RunDir(tmp_path / f"r{accum}"),
            accelerator=accelerator,
            seed=0,
        )
        finals.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-5, atol=1e-6)


class Boom(Exception):
    pass


def test_resume_matches_an_uninterrupted_run(tmp_path, accelerator):
    """Interrupt after a checkpoint, rebuild everything from scratch, resume: same weights, same metrics."""
    # log every 3, save every 4: the checkpoint at step 4 holds one step of an unfinished log window
    cfg = TrainConfig(max_steps=12, batch_size=8, lr=1e-2, save_every=4, log_every=3, eval_every=3, progress=False)
    data = toy_data()
    ran: list[int] = []  # the optimizer steps each fit call ran

    def train(run: RunDir, crash_at: int | None = None) -> nn.Module:
        torch.manual_seed(123)  # as a recipe reseeds at each stage start
        model = Distiller(toy_model(), [CE])
        calls = {"n": 0}
        ran.append(0)
        count = Callbacks(on_step=lambda product, step: ran.__setitem__(-1, ran[-1] + 1))

        def evaluate(m: nn.Module) -> dict[str, float]:
            calls["n"] += 1
            if crash_at is not None and calls["n"] == crash_at:
                raise Boom  # dies between two checkpoints, after logging past the last one
            return {"w": float(m[0].weight.sum())}  # the product: the student

        fit(model, data, cfg, stage="s", run=run, accelerator=accelerator, seed=7, eval_fn=evaluate, callbacks=count)
        return model

    straight = train(RunDir(tmp_path / "a"))
    broken = RunDir(tmp_path / "b")
    with pytest.raises(Boom):
        train(broken, crash_at=2)  # evals at steps 3, 6: dies at step 6, last checkpoint at step 4
    assert [p.name for p in checkpoints(broken, "s")] == ["step-00000004.pt"]
    assert not (broken.path / "s" / "done.json").exists()
    resumed = train(broken)
    assert ran == [12, 6, 8], "the resumed stage ran the 8 steps after its checkpoint, not all 12"
    for p, q in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    strip = lambda recs: [{k: v for k, v in r.items() if k not in CLOCK} for r in recs]  # noqa: E731
    assert strip(broken.metrics()) == strip(RunDir(tmp_path / "a").metrics())


def test_finished_stage_is_loaded_not_retrained(tmp_path, accelerator):
    run = RunDir(tmp_path / "run")
    cfg = TrainConfig(max_steps=5, batch_size=8, progress=False)
    first = toy_model(0)
    fit(Distiller(first, [CE]), toy_data(), cfg, stage="s", run=run, accelerator=accelerator, seed=0)
    n_records = len(run.metrics())
    again = toy_model(1)
    fit(Distiller(again, [CE]), toy_data(), cfg, stage="s", run=run, accelerator=accelerator, seed=0)
    assert len(run.metrics()) == n_records
    for p, q in zip(first.parameters(), again.parameters()):
        torch.testing.assert_close(p, q)


def test_teacher_is_outside_parameters_state_and_grad(tmp_path, accelerator):
    teacher = toy_model(5)
    before = [p.clone() for p in teacher.parameters()]
    model = Distiller(toy_model(0), [KD, CE], {"teacher": teacher})
    assert not any(k.startswith("teacher") or "_teachers" in k for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in toy_model().parameters())
    teacher.train()  # someone flips it: the teacher still runs in eval mode (dropout off)
    cfg = TrainConfig(max_steps=4, batch_size=8, save_every=2, progress=False)
    fit(model, toy_data(), cfg, stage="s", run=RunDir(tmp_path / "r"), accelerator=accelerator, seed=0)
    assert not teacher.training
    for p, q in zip(before, teacher.parameters()):
        assert torch.equal(p, q) and q.grad is None
    ckpt = torch.load(checkpoints(RunDir(tmp_path / "r"), "s")[-1], weights_only=False)
    assert all(k.startswith("student.") for k in ckpt["model"])


def test_no_full_step_is_a_clear_error(tmp_path, accelerator):
    from distill.errors import DistillError

    with pytest.raises(
        DistillError, match="make no full step of batch_size 16 x grad_accum 1 x 1 processes; lower its batch_size"
    ):
        fit(
            Distiller(toy_model(), [CE]),
            toy_data(8),
            TrainConfig(batch_size=16, progress=False),
            stage="s",
            run=RunDir(tmp_path / "r"),
            accelerator=accelerator,
            seed=0,
        )


def test_step_schedule_drops_tenfold_at_half():
    f = lr_lambda(TrainConfig(schedule="step"), total_steps=10)
    assert [f(s) for s in (0, 4, 5, 9)] == [1.0, 1.0, 0.1, 0.1]


class TwoRates(nn.Module):
    """A module that owns its optimizer groups: `a` at the config's lr, `b` ten times slower."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(()))
        self.b = nn.Parameter(torch.ones(()))

    def param_groups(self) -> list[dict]:
        return [{"params": [self.a], "lr": 0.1}, {"params": [self.b], "lr": 0.01}]

    def forward(self, batch):
        loss = (self.a + self.b) * batch["x"].mean()
        return loss, {}


def test_parameter_groups_and_in_memory_training(tmp_path, accelerator):
    model = TwoRates()
    data = {"x": torch.ones(4)}
    cfg = TrainConfig(max_steps=3, batch_size=2, optimizer="sgd", momentum=0.0, schedule="constant", progress=False)
    fit(model, data, cfg, stage="mem", run=None, accelerator=accelerator, seed=0)
    # d loss / d a = d loss / d b = 1 every step: a moves by 3 x 0.1, b by 3 x 0.01
    assert float(model.a.detach()) == pytest.approx(0.7) and float(model.b.detach()) == pytest.approx(0.97)
    assert not list(tmp_path.iterdir()), "run=None writes nothing"


def test_named_callbacks_receive_the_product_not_the_wrapper(tmp_path, accelerator):
    """on_step / on_eval / on_epoch_end / on_save each get the student, at the steps they promise."""
    from distill.engine import Callbacks

    student = toy_model()
    seen: dict[str, list] = {"step": [], "eval": [], "epoch": [], "save": []}
    hooks = Callbacks(
        on_step=lambda m, step: seen["step"].append((m is student, step)),
        on_eval=lambda m, step, metrics: seen["eval"].append((m is student, step, metrics["n"])),
        on_epoch_end=lambda m, epoch: seen["epoch"].append((m is student, epoch)),
        on_save=lambda m, step: seen["save"].append((m is student, step)),
    )
    cfg = TrainConfig(epochs=3, batch_size=16, eval_every=6, save_every=5, progress=False)  # 4 steps an epoch
    fit(
        Distiller(student, [CE]),
        toy_data(),
        cfg,
        stage="s",
        run=RunDir(tmp_path / "r"),
        accelerator=accelerator,
        seed=0,
        eval_fn=lambda m: {"n": float(m is student)},
        callbacks=hooks,
        product=student,
    )
    assert seen["step"] == [(True, s) for s in range(1, 13)]
    assert seen["eval"] == [(True, 6, 1.0), (True, 12, 1.0)]
    assert seen["epoch"] == [(True, 1), (True, 2), (True, 3)]
    assert seen["save"] == [(True, 5), (True, 10)]  # none at the last step: the finished stage is saved instead


def test_several_named_products_are_saved_and_reloaded(tmp_path, accelerator):
    from safetensors.torch import load_file

    a, b = toy_model(0), toy_model(1)
    both = nn.ModuleDict({"a": a, "b": b})

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = both

        def forward(self, batch):
            x, y = batch["inputs"], batch["labels"]
            return sum(nn.functional.cross_entropy(m(x), y) for m in self.pair.values()), {}

    cfg = TrainConfig(max_steps=3, batch_size=16, progress=False)
    run = RunDir(tmp_path / "r")
    fit(Two(), toy_data(), cfg, stage="pair", run=run, accelerator=accelerator, seed=0, product={"a": a, "b": b})
    assert torch.equal(load_file(str(run.path / "pair" / "a.safetensors"))["0.weight"], a[0].weight.detach())
    fresh = {"a": toy_model(5), "b": toy_model(6)}
    fit(Two(), toy_data(), cfg, stage="pair", run=run, accelerator=accelerator, seed=0, product=fresh)  # loaded
    assert torch.equal(fresh["b"][0].weight, b[0].weight)


def _crashing_fit(run: RunDir, cfg: TrainConfig, crash_at: int | None) -> nn.Module:
    """A fit that raises at its `crash_at`-th evaluation (None: runs through), rebuilt from scratch each call."""
    torch.manual_seed(123)
    model = Distiller(toy_model(), [CE])
    calls = {"n": 0}

    def evaluate(m: nn.Module) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Boom
        return {"w": float(m[0].weight.sum())}

    fit(
        model,
        toy_data(),
        cfg,
        stage="s",
        run=run,
        accelerator=Accelerator(cpu=True),
        seed=7,
        eval_fn=evaluate,
        product=model.student,
    )
    return model


def _same_run(a: RunDir, b: RunDir, ma: nn.Module, mb: nn.Module) -> None:
    for p, q in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    strip = lambda recs: [{k: v for k, v in r.items() if k not in CLOCK} for r in recs]  # noqa: E731
    assert strip(a.metrics()) == strip(b.metrics())


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    cfg = TrainConfig(max_steps=12, batch_size=8, lr=1e-2, save_every=3, log_every=2, eval_every=5, progress=False)
    straight = _crashing_fit(RunDir(tmp_path / "a"), cfg, None)
    broken = RunDir(tmp_path / "b")
    with pytest.raises(Boom):
        _crashing_fit(broken, cfg, crash_at=2)  # evals at 5, 10: dies at step 10; checkpoints at 6 and 9
    newest = checkpoints(broken, "s")[-1]
    assert newest.name == "step-00000009.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    resumed = _crashing_fit(broken, cfg, None)
    assert (
        "checkpoint step-00000009.pt is truncated or corrupt; resuming from step-00000006.pt" in capsys.readouterr().err
    )
    _same_run(RunDir(tmp_path / "a"), broken, straight, resumed)


def test_killed_before_the_first_checkpoint_the_metrics_hold_each_step_once(tmp_path):
    cfg = TrainConfig(max_steps=12, batch_size=8, lr=1e-2, save_every=100, log_every=2, eval_every=5, progress=False)
    straight = _crashing_fit(RunDir(tmp_path / "a"), cfg, None)
    broken = RunDir(tmp_path / "b")
    with pytest.raises(Boom):
        _crashing_fit(broken, cfg, crash_at=2)  # logged steps 2..10, no checkpoint yet
    assert not checkpoints(broken, "s") and broken.metrics()
    resumed = _crashing_fit(broken, cfg, None)
    _same_run(RunDir(tmp_path / "a"), broken, straight, resumed)


def test_under_sharding_fit_hands_every_frozen_teacher_to_the_sharder(monkeypatch, accelerator):
    """The contract's place_frozen: the engine shards what the trainable says is frozen, and nothing reaches
    into its attributes (a distiller wrapped for on-policy sampling delegates)."""
    import distill.engine
    from distill.kd.fused import FusedLM
    from distill.kd.onpolicy import OnPolicy

    placed = []
    monkeypatch.setattr(distill.engine, "sharded", lambda acc: True)
    monkeypatch.setattr(distill.engine, "shard_frozen", lambda acc, m: placed.append(m) or nn.Sequential(m))
    teachers = {"a": toy_model(1), "b": toy_model(2)}
    mean = KD.model_copy(update={"inputs": ["student.logits", "teacher[mean].logits"]})
    model = Distiller(toy_model(), [mean], teachers=teachers)
    fit(
        model,
        toy_data(),
        TrainConfig(max_steps=1, batch_size=8, progress=False),
        stage="s",
        run=None,
        accelerator=accelerator,
        seed=0,
    )
    assert placed == list(teachers.values())
    assert [t.model[0] for t in model.teachers] == list(teachers.values())  # the sharded ones are used from now on
    placed.clear()
    assert hasattr(FusedLM, "place_frozen")  # the fused LM distiller holds its teacher the same way
    OnPolicy(Distiller(toy_model(), [mean], teachers=teachers), 0.0, 4, 1.0, 0, 0).place_frozen(placed.append)
    assert placed == list(teachers.values())


def test_an_optimizer_and_a_schedule_by_dotted_path(tmp_path, monkeypatch, accelerator):
    """A user's schedule in their own module and torch's RAdam: the stage uses both; bad names are one line."""
    import sys

    (tmp_path / "my_schedules.py").write_text("def halves(progress):\n    return 1.0 if progress < 0.5 else 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_schedules", None)
    cfg = TrainConfig(
        max_steps=4,
        batch_size=8,
        lr=0.1,
        optimizer="torch.optim.RAdam",
        optimizer_args={"betas": (0.8, 0.99)},
        schedule="my_schedules:halves",
        progress=False,
    )
    assert [lr_lambda(cfg, 4)(s) for s in range(4)] == [1.0, 1.0, 0.5, 0.5]
    run = RunDir(tmp_path / "run")
    fit(
        Distiller(toy_model(), [CE]),
        toy_data(),
        cfg.model_copy(update={"log_every": 1}),
        stage="s",
        run=run,
        accelerator=accelerator,
        seed=0,
    )
    # each record holds the lr of the step after it: halves(1/4), halves(2/4), ...
    assert [r["lr"] for r in run.metrics() if "lr" in r] == pytest.approx([0.1, 0.05, 0.05, 0.05])
    from distill.optim import make_optimizer

    opt = make_optimizer(list(toy_model().parameters()), cfg)
    assert type(opt).__name__ == "RAdam" and opt.defaults["betas"] == (0.8, 0.99)
    for field, bad, message in [
        ("optimizer", "torch.nn.Linear", "is not a torch.optim.Optimizer class"),
        ("optimizer", "adam", "optimizer 'adam' is neither one of ['adamw', 'sgd']"),
        ("schedule", "my_schedules:nope", "schedule 'my_schedules:nope' cannot be imported"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):  # pydantic's, naming the field
            TrainConfig(**{field: bad})


def test_adamw_is_torchs_fused_one_and_steps_as_the_loop_does():
    from distill.optim import make_optimizer

    ours, ref = toy_model().eval(), toy_model().eval()  # the same weights; no dropout
    cfg = TrainConfig(lr=0.01, weight_decay=0.1)
    opts = [make_optimizer(list(ours.parameters()), cfg),
            torch.optim.AdamW(ref.parameters(), lr=0.01, betas=(cfg.momentum, 0.999), weight_decay=0.1)]  # fmt: skip
    assert opts[0].defaults["fused"] is True and not opts[1].defaults["fused"]
    x = toy_data()["inputs"]
    for _ in range(3):
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
