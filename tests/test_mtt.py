"""Dataset distillation by matching training trajectories: DSA, ZCA, the matching loss by hand,
herding by hand, the recipe end to end through the CLI, resume after a kill, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn

from conftest import ROOT, straight_killed_resumed, write_tensor_file
from distill.cli import main
from distill.config import load_config
from distill.context import stage_seed
from distill.data import ImageData, load_images
from distill.dd import StudentNet, StudentSteps, SyntheticSet, TrajectoryMatcher, herding, schedule, unroll
from distill.dd.augment import OPS, DSAConfig, dsa
from distill.dd.buffer import check_span
from distill.dd.protocol import Classifier
from distill.dd.zca import ZCA
from distill.errors import DistillError
from distill.losses import trajectory_matching
from distill.models import ModelSpec, build_model
from distill.recipes import mtt
from test_cli import DISTILL, ENV, read_metrics, strip


# --- DSA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
def test_every_dsa_op_is_differentiable_and_seeded(op):
    cfg = DSAConfig(strategy=op)
    x = torch.rand(6, 3, 12, 12, requires_grad=True)
    a = dsa(x, cfg, torch.Generator().manual_seed(5))
    b = dsa(x, cfg, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and torch.equal(a, b)
    (g,) = torch.autograd.grad((a * torch.linspace(0, 1, a.numel()).view_as(a)).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    draws = [dsa(x, cfg, torch.Generator().manual_seed(s)) for s in range(6)]
    if op != "flip":  # a flip is either on or off: two seeds may agree
        assert any(not torch.equal(draws[0], d) for d in draws[1:]), "different seeds must differ"


def test_default_draws_per_image_reproducibly_by_seed():
    """The official code's default: every image its own crop, scale, rotation...; the same seed, the same draws."""
    x = torch.rand(1, 1, 10, 10).repeat(6, 1, 1, 1)
    for op in ("crop", "scale", "rotate", "color", "cutout", "flip", "noise"):
        cfg = DSAConfig(strategy=op)
        a, b = (dsa(x, cfg, torch.Generator().manual_seed(3)) for _ in range(2))
        assert torch.equal(a, b)
        assert len({tuple(img.flatten().tolist()) for img in a}) > 1, f"{op}: one draw for all images"
        assert not torch.equal(a, dsa(x, cfg, torch.Generator().manual_seed(4)))


def test_siamese_mode_shares_one_draw_across_the_batch():
    x = torch.rand(1, 1, 10, 10).repeat(5, 1, 1, 1)
    shared = dsa(x, DSAConfig(strategy="rotate", same_for_batch=True), torch.Generator().manual_seed(0))
    own = dsa(x, DSAConfig(strategy="rotate"), torch.Generator().manual_seed(0))
    assert all(torch.allclose(shared[0], s) for s in shared[1:])
    assert not all(torch.allclose(own[0], s) for s in own[1:])


def test_s_mode_draws_one_op_and_m_mode_applies_all_in_order():
    """S: each call is exactly one of the ops; over seeds both occur. M: every op, in the strategy's order."""
    x = torch.rand(4, 1, 8, 8) + 0.5  # no zero pixels: cutout's zeros are its own
    s_mode = DSAConfig(strategy="cutout_noise")
    kinds = set()
    for seed in range(12):
        y = dsa(x, s_mode, torch.Generator().manual_seed(seed))
        cutout = bool((y == 0).any()) and bool(((y == 0) | (y == x)).all())
        noise = not (y == 0).any() and bool((y != x).all())
        assert cutout != noise, f"seed {seed}: one op family, not {'both' if cutout else 'neither'}"
        kinds.add("cutout" if cutout else "noise")
    assert kinds == {"cutout", "noise"}
    m_mode = DSAConfig(strategy="cutout_noise", mode="M")
    both = dsa(x, m_mode, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    by_hand = dsa(dsa(x, DSAConfig(strategy="cutout", mode="M"), g), DSAConfig(strategy="noise", mode="M"), g)
    assert torch.equal(both, by_hand)
    assert not torch.equal(both, dsa(x, DSAConfig(strategy="noise", mode="M"), torch.Generator().manual_seed(3)))


def test_s_mode_applies_one_op_family_and_none_is_identity():
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(dsa(x, DSAConfig(strategy="none")), x)
    g = torch.Generator().manual_seed(1)
    cutout_only = dsa(x, DSAConfig(strategy="cutout"), g)
    assert ((cutout_only == 0) | (cutout_only == x)).all()  # cutout only zeroes pixels
    with pytest.raises(ValueError, match="unknown DSA ops"):
        DSAConfig(strategy="color_blur")


# --- ZCA ---------------------------------------------------------------------------------------
def test_zca_round_trip_and_whitened_covariance():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=g)
    x = (torch.randn(4000, 12, generator=g) @ mix + 3.0).reshape(4000, 3, 2, 2)
    zca = ZCA.fit(x, eps=1e-6)
    w = zca(x)
    assert torch.allclose(zca.inverse(w), x, atol=1e-3)
    flat = w.reshape(len(w), -1)
    cov = (flat - flat.mean(0)).T @ (flat - flat.mean(0)) / len(flat)
    assert torch.allclose(cov, torch.eye(12), atol=2e-3)
    # a regularised ZCA shrinks low-variance directions but still inverts exactly
    soft = ZCA.fit(x, eps=0.1)
    assert torch.allclose(soft.inverse(soft(x)), x, atol=1e-3)


# --- the matching loss and an unrolled step, by hand -------------------------------------------
def test_trajectory_matching_by_hand():
    s, a, e = [torch.tensor([1.0, 2.0])], [torch.tensor([0.0, 0.0])], [torch.tensor([2.0, 2.0])]
    assert float(trajectory_matching(s, a, e)) == pytest.approx(1.0 / 8.0)


def test_one_unrolled_step_on_a_toy_trajectory_matches_a_hand_computation():
    """Linear(1 -> 2) from W = 0, one image x = 1 of class 0, alpha = 0.1:
    softmax = (.5, .5), dCE/dW = (-.5, .5), so W' = (.05, -.05). Against the target (.1, -.1):
    loss = (.05^2 + .05^2) / (.1^2 + .1^2) = 0.25, and dloss/dalpha = 100 (0.5 alpha - 0.1) = -5."""
    net = nn.Linear(1, 2, bias=False)
    start = {"weight": torch.zeros(2, 1)}
    target = {"weight": torch.tensor([[0.1], [-0.1]])}
    syn = SyntheticSet(torch.ones(1, 1), torch.tensor([0]), lr=0.1)
    matcher = TrajectoryMatcher(syn, net, [[start, target]], syn_steps=1, expert_epochs=1, batch_syn=1,
                                lr_img=1.0, lr_lr=1.0, dsa_cfg=DSAConfig(strategy="none"))  # fmt: skip
    loss, terms = matcher({"expert": torch.tensor([0]), "start": torch.tensor([0])})
    assert float(loss.detach()) == pytest.approx(0.25, rel=1e-5)
    loss.backward()
    assert float(syn.lr.grad) == pytest.approx(-5.0, rel=1e-4)
    # dloss/dx: W' = -alpha (softmax(0) - onehot) x, so moving x moves W' along (+,-): towards the target
    assert float(syn.images.grad) < 0
    assert float(terms["param/syn_lr"]) == pytest.approx(0.1)
    assert [g["lr"] for g in matcher.param_groups()] == [1.0, 1.0]


def test_herding_by_hand():
    feats = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # mean 3.25
    # first: 2 is closest to 3.25; then (2 + f) / 2 should be near 3.25: f = 1 gives 1.5, best of the rest
    assert herding(feats, 2).tolist() == [2, 1]


def test_schedule_is_seeded_and_in_range():
    a, b = schedule(50, 3, 4, seed=1), schedule(50, 3, 4, seed=1)
    assert torch.equal(a["expert"], b["expert"]) and torch.equal(a["start"], b["start"])
    assert a["expert"].max() < 3 and a["start"].max() < 4 and a["start"].min() >= 0


# --- configs, presets and errors ---------------------------------------------------------------
def test_named_configs_fill_in_and_explicit_values_win():
    cfg = load_config(mtt.Config, "fmnist_ipc1", recipe="mtt")
    assert (cfg.distill.ipc, cfg.distill.syn_steps, cfg.distill.lr_lr, cfg.distill.train.lr) == (1, 50, 1e-7, 1000)
    cfg = load_config(mtt.Config, "cifar10_ipc10", ["distill.syn_steps=7", "data.path=/x"], recipe="mtt")
    assert (cfg.zca, cfg.distill.syn_steps, cfg.distill.max_start_epoch, cfg.data.source) == (True, 7, 20, "cifar10")
    assert cfg.distill.train.lr == 1e5 and cfg.distill.train.momentum == 0.5  # the file's lr, the section's defaults
    demo = load_config(mtt.Config, "demo", recipe="mtt")  # `base: fmnist_ipc1` under the demo's own values
    assert (demo.distill.syn_steps, demo.distill.train.max_steps, demo.buffer.experts) == (50, 100, 2)


def _meta_gradients(memory: str, dsa_cfg: DSAConfig, soft: bool, compile: bool = False, depth: int = 2):
    """A float64 toy (6 images of 8x8, 3 classes, 7 student steps on batches of 4) and the gradients of a
    squared distance of its end point with respect to the images, the step size (and soft labels)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same net, images and target for every call
        net = build_model(ModelSpec(arch="dc_convnet", args={"width": 6, "depth": depth}), in_channels=1,
                          num_classes=3, image_size=8).double().requires_grad_(False)  # fmt: skip
        names, start = zip(*((n, p.detach()) for n, p in net.named_parameters()))
        images = torch.randn(6, 1, 8, 8, dtype=torch.float64, requires_grad=True)
        lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
        targets = logits if soft else torch.tensor([0, 0, 1, 1, 2, 2])
        goal = [torch.randn_like(p) for p in start]
        torch.manual_seed(1)  # the same mini-batches and augmentations in every mode
        steps = StudentSteps.draw(StudentNet(net, list(names), compile), 6, 7, 4, dsa_cfg, images.device)
        end = unroll(steps, list(start), images, targets, lr, memory)
        loss = sum(((e - g) ** 2).sum() for e, g in zip(end, goal))
        return loss.detach(), torch.autograd.grad(loss, [images, lr, *([logits] if soft else [])])


def _assert_same(a: tuple, b: tuple) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-12)
    for x, y in zip(grads_a, grads_b, strict=True):
        assert x.abs().max() > 0 and torch.allclose(x, y, rtol=1e-9, atol=1e-12 * float(x.abs().max()))


@pytest.mark.parametrize("strategy", ["none", "color_crop_cutout_flip_scale_rotate_noise"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard labels", "soft labels"])
def test_constant_memory_gives_the_unrolled_meta_gradient(strategy, soft):
    """TESLA's reverse accumulation against the full unrolled graph, in float64: the same end point and
    the same gradients for the images, the step size and soft labels, every DSA op per image included."""
    cfg = DSAConfig(strategy=strategy, mode="M", same_for_batch=False)
    constant = _meta_gradients("constant", cfg, soft)
    _assert_same(_meta_gradients("unrolled", cfg, soft), constant)
    if strategy != "none":  # the augmentation mattered: without it the gradient differs
        plain = _meta_gradients("constant", DSAConfig(strategy="none"), soft)
        assert not torch.allclose(plain[1][0], constant[1][0])


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="compiling on a CPU needs a C++ compiler")
def test_compiled_constant_memory_gives_the_same_meta_gradient():
    """distill.compile=true: the per-step derivatives through torch.compile (soft labels, DSA per image)."""
    cfg = DSAConfig(same_for_batch=False)
    _assert_same(_meta_gradients("unrolled", cfg, True, depth=1),
                 _meta_gradients("constant", cfg, True, compile=True, depth=1))  # fmt: skip


def test_soft_labels_train_on_the_softmax_of_their_logits():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    batch = {"inputs": torch.randn(5, 1, 2, 2), "labels": torch.randn(5, 3)}
    loss, _ = Classifier(net, DSAConfig(strategy="none"))(batch)
    logp = net(batch["inputs"]).log_softmax(-1)
    expected = -(batch["labels"].softmax(-1) * logp).sum(-1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_a_start_epoch_beyond_the_trajectory_is_a_clear_error():
    with pytest.raises(DistillError, match="runs past the 4 saved expert epochs"):
        load_config(mtt.Config, None, ["buffer.train.epochs=4", "distill.max_start_epoch=4"])
    net = nn.Linear(2, 2)
    trajectory = [{n: p.detach() for n, p in net.named_parameters()} for _ in range(4)]  # epochs 0..3
    check_span([trajectory], max_start_epoch=2, expert_epochs=2, model=net)  # needs epoch 3: fine
    with pytest.raises(DistillError, match="trajectories stop at epoch 3"):
        check_span([trajectory], max_start_epoch=3, expert_epochs=2, model=net)
    with pytest.raises(DistillError, match="do not fit the model"):
        check_span([trajectory], max_start_epoch=1, expert_epochs=1, model=nn.Linear(2, 3))


# --- the recipe end to end ----------------------------------------------------------------------
@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    """300 train / 120 test 12x12 images of 4 classes."""
    return write_tensor_file(tmp_path / "small.pt", 300, 120)


def tiny_mtt(data: Path, out: Path, name: str = "tiny") -> list[str]:
    return [
        "mtt",
        "data.source=tensors",
        f"data.path={data}",
        f"run.output_dir={out}",
        f"run.run_name={name}",
        "model.args.width=8",
        "buffer.experts=2",
        "buffer.train.epochs=3",
        "buffer.train.batch_size=32",
        "distill.ipc=2",
        "distill.train.max_steps=8",
        "distill.syn_steps=5",
        "distill.expert_epochs=2",
        "distill.max_start_epoch=2",
        "distill.train.lr=100",
        "distill.train.save_every=3",
        "distill.train.log_every=2",
        "distill.train.eval_every=4",
        "eval.nets=2",
        "eval.train.epochs=30",
        "eval.cross_arch=[{arch: mlp, args: {hidden: [32]}}, {arch: resnet, args: {widths: [4, 8]}}]",
    ]


def test_buffer_distill_evaluate_through_the_cli(small_set, tmp_path, capsys):
    assert main(tiny_mtt(small_set, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "| mtt | dc_convnet" in out and "| random real |" in out and "| herding |" in out
    run = tmp_path / "tiny"
    result = json.loads((run / "results.json").read_text())
    sets = [(r["set"], r["model"].split("(")[0]) for r in result["rows"]]
    assert sets == [("mtt", "dc_convnet"), ("random real", "dc_convnet"), ("herding", "dc_convnet"),
                    ("mtt", "mlp"), ("mtt", "resnet")]  # fmt: skip
    assert all(r["images"] == 8 and r["nets"] == 2 for r in result["rows"])
    assert all(r["test_accuracy"] > 0.4 for r in result["rows"] if r["model"].startswith("dc_convnet"))  # chance 0.25
    # every expert saved epochs 0..3: epoch 0 is the initialisation, and each epoch moved from the one before
    for k in range(2):
        files = sorted((run / "buffer" / f"expert-{k:03d}").glob("epoch-*.safetensors"))
        assert [f.stem for f in files] == ["epoch-0000", "epoch-0001", "epoch-0002", "epoch-0003"]
        epochs = [load_file(str(f)) for f in files]
        for before, after in zip(epochs, epochs[1:]):
            assert any(not torch.equal(before[n], after[n]) for n in before), "an epoch saved the same parameters"
        set_seed(stage_seed(0, f"buffer/expert-{k:03d}"))  # as the recipe builds each expert
        init = build_model(ModelSpec(arch="dc_convnet", args={"width": 8}), in_channels=1, num_classes=4,
                           image_size=12)  # fmt: skip
        assert all(torch.equal(p.detach(), epochs[0][n]) for n, p in init.named_parameters())
    expert_evals = [r for r in read_metrics(run) if r["stage"] == "buffer/expert-000" and "eval/accuracy" in r]
    assert len(expert_evals) == 3
    # the synthetic set moved away from the real images it started from, alpha was learned, both were saved
    syn = load_file(str(run / "synthetic.safetensors"))
    assert syn["images"].shape == (8, 1, 12, 12) and syn["labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    start_images = load_images(ImageData(source="tensors", path=str(small_set))).train["inputs"][syn["init_index"]]
    moved = (syn["images"] - start_images).abs().amax(dim=(1, 2, 3))
    assert (moved > 1e-3).all(), moved
    assert 0 <= float(syn["pixels"].min()) and float(syn["pixels"].max()) <= 1
    assert float(syn["lr"]) != 0.01 and result["info"]["learned_lr"] == pytest.approx(float(syn["lr"]))
    distill = [r for r in read_metrics(run) if r["stage"] == "distill"]
    assert {"loss", "param/syn_lr"} <= set(distill[0]) and [r["step"] for r in distill if "eval/accuracy" in r] == [
        4,
        8,
    ]
    for rel in ["plots/synthetic.png", "plots/distill-loss.png", "plots/distill-params.png", "plots/distill-eval.png"]:
        assert (run / rel).stat().st_size > 1000, rel
    report = (run / "report.md").read_text()
    assert "![synthetic](plots/synthetic.png)" in report and "learned parameters" in report


def test_soft_labels_and_herding_come_from_the_last_expert_epoch(small_set, tmp_path, monkeypatch):
    """With lr_label=0 the soft labels stay what TESLA assigns: the first expert's logits at its last saved epoch
    (epoch 3 here, not its initialisation) on the initial images; herding selects with that same expert."""
    import distill.recipes.mtt

    used = []
    herding = distill.recipes.mtt.herding_select
    monkeypatch.setattr(distill.recipes.mtt, "herding_select", lambda e, *a: used.append(e) or herding(e, *a))
    over = [*tiny_mtt(small_set, tmp_path), "distill.soft_labels=true", "distill.lr_label=0", "eval.cross_arch=[]"]
    assert main(over) == 0
    run = tmp_path / "tiny"
    last = load_file(str(run / "buffer" / "expert-000" / "epoch-0003.safetensors"))
    expert = build_model(ModelSpec(arch="dc_convnet", args={"width": 8}), in_channels=1, num_classes=4, image_size=12)
    expert.load_state_dict(last, strict=False)
    syn = load_file(str(run / "synthetic.safetensors"))
    start = load_images(ImageData(source="tensors", path=str(small_set))).train["inputs"][syn["init_index"]]
    with torch.no_grad():
        torch.testing.assert_close(syn["soft_labels"], expert.eval()(start), rtol=0, atol=1e-6)
    (chosen,) = used
    assert all(torch.equal(p, last[n]) for n, p in chosen.state_dict().items() if n in last)
    first = load_file(str(run / "buffer" / "expert-000" / "epoch-0000.safetensors"))
    assert any(not torch.equal(p, first[n]) for n, p in chosen.state_dict().items() if n in first)


def test_experts_are_reused_from_another_run(small_set, tmp_path, capsys):
    assert main(tiny_mtt(small_set, tmp_path, "first")) == 0
    over = [*tiny_mtt(small_set, tmp_path, "second"), f"buffer.from_run={tmp_path / 'first'}", "distill.ipc=1"]
    assert main(over) == 0
    assert not (tmp_path / "second" / "buffer").exists()
    assert json.loads((tmp_path / "second" / "results.json").read_text())["info"]["experts"] == 2
    bad = [
        *tiny_mtt(small_set, tmp_path, "third"),
        f"buffer.from_run={tmp_path / 'first'}",
        "distill.max_start_epoch=3",
    ]
    assert main(bad) == 2
    assert "trajectories stop at epoch 3" in capsys.readouterr().err
    assert not (tmp_path / "third").exists(), "a run refused after its start, with nothing in it yet, is removed"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["distill.ipc=200"], "ipc 200 is more than class 0 has images (75); lower distill.ipc"),
        (["distill.max_start_epoch=3"], "runs past the 3 saved expert epochs"),
        (["distill.memory=constant", "distill.expert_epochs=3"], "runs past the 3 saved expert epochs"),
        (["distill.syn_steps=0"], "distill.syn_steps = 0: Input should be greater than 0"),
        (["distill.memory=unrolled", "distill.compile=true"], "distill.compile needs distill.memory=constant"),
        (["distill.memory=tesla"], "distill.memory = 'tesla': Input should be 'unrolled' or 'constant'"),
        (["--config", "cifar11_ipc1"], "config file cifar11_ipc1 does not exist; the named configs of mtt: ["),
        (["dsa.strategy=color_blur"], "unknown DSA ops ['blur']"),
        (["data.source=cifar10"], "lacks ['data_batch_1.bin', 'data_batch_2.bin',"),
    ],
)
def test_mtt_user_errors_are_one_line(small_set, tmp_path, capsys, extra, message):
    assert main([*tiny_mtt(small_set, tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "tiny").exists(), "a failed start must leave no run directory behind"


@pytest.mark.slow
def test_killed_while_training_experts_resumes_to_the_same_trajectories(small_set, tmp_path):
    over = [o for o in tiny_mtt(small_set, tmp_path)[1:] if not o.startswith("run.run_name")]
    over += ["buffer.train.epochs=8", "distill.train.max_steps=2", "eval.cross_arch=[]", "eval.baselines=[]",
             "eval.nets=1"]  # fmt: skip
    straight_killed_resumed([*DISTILL, "mtt"], over, ENV, tmp_path, "checkpoints/buffer/expert-000")
    for k in range(2):
        a, b = (sorted((tmp_path / n / "buffer" / f"expert-{k:03d}").glob("epoch-*")) for n in ("straight", "killed"))
        assert [f.name for f in a] == [f.name for f in b] and len(a) == 9
        for fa, fb in zip(a, b):
            ta, tb = load_file(str(fa)), load_file(str(fb))
            assert all(torch.equal(ta[n], tb[n]) for n in ta), fb
    assert strip(read_metrics(tmp_path / "killed")) == strip(read_metrics(tmp_path / "straight"))


@pytest.mark.slow
@pytest.mark.parametrize("memory", ["unrolled", "constant"])
def test_killed_in_the_middle_of_distillation_resumes_to_the_same_result(small_set, tmp_path, memory):
    over = [o for o in tiny_mtt(small_set, tmp_path)[1:] if not o.startswith("run.run_name")]
    over += ["distill.train.max_steps=40", "distill.syn_steps=10", "distill.train.save_every=5",
             "distill.train.eval_every=0", "eval.cross_arch=[]", f"distill.memory={memory}"]  # fmt: skip
    if memory == "constant":
        over.append("distill.soft_labels=true")
    straight_killed_resumed([*DISTILL, "mtt"], over, ENV, tmp_path, "checkpoints/distill")
    a, b = (load_file(str(tmp_path / n / "synthetic.safetensors")) for n in ("straight", "killed"))
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["lr"], b["lr"])
    if memory == "constant":  # the soft labels were learned from the last expert's logits, saved and resumed
        assert torch.equal(a["soft_labels"], b["soft_labels"])
        expert = build_model(ModelSpec(arch="dc_convnet", args={"width": 8}), in_channels=1, num_classes=4,
                             image_size=12)  # fmt: skip
        last = tmp_path / "straight" / "buffer" / "expert-000" / "epoch-0003.safetensors"
        expert.load_state_dict(load_file(str(last)))
        real = load_images(ImageData(source="tensors", path=str(small_set))).train["inputs"][a["init_index"]]
        with torch.no_grad():
            init = expert.eval()(real)
        assert a["soft_labels"].shape == init.shape == (8, 4)
        assert 1e-4 < (a["soft_labels"] - init).abs().max() < 10
    rows = [json.loads((tmp_path / n / "results.json").read_text())["rows"] for n in ("straight", "killed")]
    assert rows[0] == rows[1]
    assert strip(read_metrics(tmp_path / "killed")) == strip(read_metrics(tmp_path / "straight"))


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "mtt").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_validate(path):
    cfg = load_config(mtt.Config, path)
    assert cfg.distill.train.max_steps > 0


@pytest.mark.bundled
def test_fashion_mnist_slice_through_the_cli(tmp_path, capsys):
    """The demo config on a slice of the real data set: experts learn, and every set is scored."""
    args = ["mtt", "--config", str(ROOT / "configs" / "mtt" / "demo.yaml"), f"run.output_dir={tmp_path}",
            "run.run_name=f", "data.train_limit=1500", "data.test_limit=500", "model.args.width=16",
            "buffer.experts=1", "buffer.train.epochs=3", "distill.train.max_steps=4", "distill.syn_steps=10",
            "eval.train.epochs=50"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((tmp_path / "f" / "results.json").read_text())
    assert [r["set"] for r in result["rows"]] == ["mtt", "random real", "herding"]
    assert all(r["test_accuracy"] > 0.2 for r in result["rows"])  # 10 classes: chance is 0.1
    expert = [
        r["eval/accuracy"] for r in read_metrics(tmp_path / "f") if "eval/accuracy" in r and "buffer" in r["stage"]
    ]
    assert expert[-1] > max(0.3, expert[0])  # 3 epochs of 5 plain-SGD steps at lr 0.01: learning, not done
