"""`distill unify`: the sequence losses by hand, the recogniser's decoding, per-sample routing to each domain's
teacher, the text metrics, the data's errors, and the recipe end to end through the CLI (with a kill and resume)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import batches_by_stage, straight_killed_resumed
from distill.cli import main
from distill.engine import TrainConfig, fit
from distill.errors import DistillError
from distill.kd import Distiller, precompute_signals, read_precomputed
from distill.losses import attention_maps, char_affinity
from distill.models.recognizer import Recognizer
from distill.recipes.unify import CE, paper_objective
from distill.textrec.data import DomainData, TextImageData, load_text_images
from distill.textrec.evaluate import read
from distill.textrec.text import Charset, character_error_rate, edit_distance, word_accuracy
from test_cli import DISTILL, ENV, read_metrics, strip

WORDS = " ".join(a + b + c for a in "bcdmt" for b in "aeiou" for c in "nst")  # 75 distinct words


# --- losses against hand computations ----------------------------------------------------------
def test_attention_maps_distance_by_hand_with_masking_and_resizing():
    student = torch.tensor([[[[0.5, 0.5]], [[1.0, 0.0]]]])  # (B=1, T=2, 1, 2)
    teacher = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    # step 0: 0.5^2 + 0.5^2 = 0.5; step 1: 1 + 1 = 2
    assert attention_maps(student, teacher).item() == pytest.approx((0.5 + 2.0) / 2)
    assert attention_maps(student, teacher, mask=torch.tensor([[True, False]])).item() == pytest.approx(0.5)
    # a 1x2 student map against a 1x4 teacher map: bilinear resize gives 4 x 0.5, renormalised to 4 x 0.25
    wide = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    assert attention_maps(student[:, :1], wide).item() == pytest.approx(0.75**2 + 3 * 0.25**2)


def test_char_affinity_by_hand_with_masking_and_different_widths():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # (B=1, T=3, D=2); step 2 is padding
    teacher = torch.tensor([[[2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # D=3
    # kept steps 0, 1: student similarities [[1, 0], [0, 1]], teacher [[1, 1], [1, 1]] -> squared diffs sum 2 over 4
    assert char_affinity(student, teacher, mask=torch.tensor([[True, True, False]])).item() == pytest.approx(0.5)
    # unmasked: student row 2 is [.71, .71] against teacher [0, 0, 1]: sims s=[[1,0,.71],[0,1,.71],[.71,.71,1]],
    # t=[[1,1,0],[1,1,0],[0,0,1]]
    r = 2**-0.5
    by_hand = (2 * 1.0 + 4 * r**2) / 9
    assert char_affinity(student, teacher).item() == pytest.approx(by_hand)
    # a padded step whose column differs from nothing: only a mask over rows and columns gives 2 / 4 (rows only:
    # 2 / 6; no mask: 2 / 9)
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    teacher = torch.tensor([[[2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [1.0, 0.0, 1.0]]])
    assert char_affinity(student, teacher, mask=torch.tensor([[True, True, False]])).item() == pytest.approx(0.5)
    assert char_affinity(student, teacher).item() == pytest.approx(2 / 9)


def test_loss_gradients_reach_the_student_only():
    s = torch.rand(2, 3, 2, 4, requires_grad=True)
    t = torch.rand(2, 3, 2, 4, requires_grad=True)
    (attention_maps(s.softmax(-1), t.softmax(-1)) + char_affinity(s.flatten(2), t.flatten(2))).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


# --- text and metrics --------------------------------------------------------------------------
def test_charset_round_trip_and_teacher_forcing_tensors():
    cs = Charset("ab1")
    enc = cs.encode(["ab", "1"], max_length=3)
    assert enc["labels"].tolist() == [[1, 2, 0, 0], [3, 0, 0, 0]]
    assert enc["decoder_input_ids"].tolist() == [[4, 1, 2, 0], [4, 3, 0, 0]]
    assert enc["mask"].tolist() == [[True, True, True, False], [True, True, False, False]]
    assert cs.decode(torch.tensor([[1, 2, 0, 3], [3, 4, 1, 1]])) == ["ab", "1"]  # cut at the end and the start token


def test_edit_distance_word_accuracy_and_cer_by_hand():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "ab") == 2 and edit_distance("ab", "ab") == 0
    assert word_accuracy(["ab", "cd"], ["ab", "ce"]) == 0.5
    # one substitution over 4 true characters, plus 2 insertions over... corpus-level: (1 + 2) / (2 + 2)
    assert character_error_rate(["ab", "cdxy"], ["ab", "ce"]) == pytest.approx(3 / 4)


# --- the recogniser ----------------------------------------------------------------------------
def _pixels(texts: list[str]) -> torch.Tensor:
    """Fixed tiny images: a block per character, at a height that encodes it (no fonts needed)."""
    out = torch.zeros(len(texts), 1, 16, 32, dtype=torch.uint8)
    for i, t in enumerate(texts):
        for j, c in enumerate(t):
            row = "ab1".index(c) * 5
            out[i, 0, row : row + 5, 2 + 8 * j : 8 + 8 * j] = 255
    return out


def test_recogniser_learns_and_greedily_decodes_a_fixed_tiny_example():
    cs, texts = Charset("ab1"), ["ab", "1", "ba", "a1b", "b", "11"]
    data = {"pixel_values": _pixels(texts), **cs.encode(texts, max_length=3)}
    torch.manual_seed(0)
    model = Recognizer(num_chars=3, max_length=3, image_size=(16, 32), channels=[8, 16], hidden=32, embed=8)
    cfg = TrainConfig(max_steps=150, batch_size=6, lr=1e-2, schedule="constant", progress=False)
    fit(Distiller(model, [CE]), data, cfg, stage="tiny", run=None, accelerator=_cpu(), seed=0)
    first = read(model, data["pixel_values"], cs, torch.device("cpu"))
    assert first == texts  # greedy decoding, no teacher forcing, stops at the end token
    assert read(model, data["pixel_values"], cs, torch.device("cpu"), batch_size=4) == first  # batching changes nothing
    logits = model(data["pixel_values"], data["decoder_input_ids"])
    assert logits.shape == (6, 4, 4)
    assert model.glimpses(torch.zeros(1)).shape == (1,)  # the taps are identities


def _cpu():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_greedy_decoding_stops_at_the_step_limit():
    model = Recognizer(num_chars=3, max_length=4, image_size=(16, 32), channels=[4, 8], hidden=8, embed=4)
    with torch.no_grad():
        model.out.bias.zero_()
        model.out.bias[1] = 100.0  # always 'a', never the end token
    out = model.eval()(_pixels(["ab"]))
    assert out.shape[1] == 5 and Charset("ab1").decode(out.argmax(-1)) == ["aaaaa"]


# --- per-sample routing ------------------------------------------------------------------------
def _two_teachers_and_a_batch():
    torch.manual_seed(1)
    make = lambda: Recognizer(num_chars=3, max_length=3, image_size=(16, 32), channels=[4, 8], hidden=8, embed=4)  # noqa: E731
    teachers = {"printed": make().eval(), "handwritten": make().eval()}
    texts = ["ab", "1", "ba", "a1b", "b"]
    batch = {"pixel_values": _pixels(texts), **Charset("ab1").encode(texts, 3), "domain": torch.tensor([0, 1, 1, 0, 1])}
    return teachers, batch


def test_precomputed_signals_come_from_each_samples_own_teacher():
    teachers, batch = _two_teachers_and_a_batch()
    cached = precompute_signals(teachers, ["glimpses", "attention"], batch, "cpu", batch_size=2)
    assert set(cached) == {"teacher_logits", "teacher_glimpses", "teacher_attention"}
    with torch.no_grad():
        for i, d in enumerate(batch["domain"].tolist()):
            own = teachers[["printed", "handwritten"][d]]
            one = {k: v[i : i + 1] for k, v in batch.items()}
            assert torch.allclose(
                cached["teacher_logits"][i], own(one["pixel_values"], one["decoder_input_ids"])[0], atol=1e-5
            )
            other = teachers[["handwritten", "printed"][d]]
            assert not torch.allclose(
                cached["teacher_logits"][i], other(one["pixel_values"], one["decoder_input_ids"])[0]
            )


def test_cached_signals_give_the_live_routed_objective():
    teachers, batch = _two_teachers_and_a_batch()
    torch.manual_seed(2)
    student = Recognizer(num_chars=3, max_length=3, image_size=(16, 32), channels=[4, 8], hidden=6, embed=4).eval()
    live = Distiller(student, paper_objective(), teachers)
    live.build(batch)
    loss_live, terms_live = live(batch)
    taps = ["attention", "glimpses"]
    cached_batch = {**batch, **precompute_signals(teachers, taps, batch, "cpu")}
    cached = Distiller(student, read_precomputed(paper_objective()))
    cached.build(cached_batch)
    cached.objective.projections.load_state_dict(live.objective.projections.state_dict())  # the same hint projection
    loss_cached, terms_cached = cached(cached_batch)
    assert set(terms_live) == {"ce", "logits", "hint", "attention", "affinity"}
    for name in terms_live:
        assert terms_cached[name].item() == pytest.approx(terms_live[name].item(), rel=1e-5), name
    assert loss_cached.item() == pytest.approx(loss_live.item(), rel=1e-5)


# --- data -------------------------------------------------------------------------------------
@pytest.fixture
def words(tmp_path: Path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text(WORDS)
    return path


def _tiny_data(words: Path, **over) -> TextImageData:
    dom = {"train": 12, "val": 4, "test": 6}
    return TextImageData(
        domains=[
            DomainData(name="printed", **dom),
            DomainData(name="handwritten", kind="handwritten", digit_fraction=0.0, **dom),
        ],
        words=str(words),
        height=16,
        width=48,
        max_length=5,
        **over,
    )


def test_generated_domains_are_reproducible_and_test_and_validation_words_are_held_out(words):
    a, b = load_text_images(_tiny_data(words)), load_text_images(_tiny_data(words))
    for split in ("train", "val", "test"):
        for x, y in zip(a.splits[split], b.splits[split]):
            assert all(torch.equal(x[k], y[k]) for k in x)
    assert a.splits["train"][0]["pixel_values"].shape == (12, 1, 16, 48)
    assert a.union("train")["domain"].tolist() == [0] * 12 + [1] * 12
    train_words, val_words, test_words = (
        {t for texts in a.texts[split] for t in texts if not t.isdigit()} for split in ("train", "val", "test")
    )
    assert test_words and val_words and not train_words & test_words
    assert not val_words & (train_words | test_words)  # validation reads unseen words, as the test does
    c = load_text_images(_tiny_data(words, seed=1))
    assert not torch.equal(a.splits["train"][0]["pixel_values"], c.splits["train"][0]["pixel_values"])


def test_a_users_csv_of_images_is_read_and_split(tmp_path):
    rows = ["image,text"]
    for i in range(10):
        Image.fromarray(np.full((20, 60), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,w{i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    cfg = TextImageData(
        domains=[
            DomainData(name="mine", source=str(tmp_path)),
            DomainData(name="also", source=str(tmp_path / "labels.csv")),
        ],
        height=16,
        width=48,
    )
    data = load_text_images(cfg)
    sizes = [len(data.texts[s][0]) for s in ("train", "val", "test")]
    assert sizes == [7, 1, 2] and sorted(sum((data.texts[s][0] for s in ("train", "val", "test")), [])) == sorted(
        f"w{i}" for i in range(10)
    )


def test_a_users_images_of_one_text_stay_in_one_split(tmp_path):
    rows = ["image,text"]
    for i in range(40):
        Image.fromarray(np.full((20, 60), 5 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,w{i % 8}")  # five images of each of eight words
    (tmp_path / "labels.csv").write_text("\n".join(rows))

    def load(seed: int = 0):
        mine = [DomainData(name=n, source=str(tmp_path)) for n in ("mine", "also")]
        return load_text_images(TextImageData(domains=mine, height=16, width=48, seed=seed))

    for seed in range(5):
        data = load(seed)
        for d in (0, 1):
            train, val, test = (data.texts[s][d] for s in ("train", "val", "test"))
            assert train and val and test and not set(train) & set(val + test) and not set(val) & set(test)
            assert [len(x) for x in (train, val, test)] == [5 * len(set(x)) for x in (train, val, test)]
    (tmp_path / "labels.csv").write_text("\n".join(rows[:1] + [f"{i}.png,w{i % 2}" for i in range(40)]))
    with pytest.raises(DistillError, match="40 images of 2 distinct texts are too few"):
        load()


# --- the recipe through the CLI ---------------------------------------------------------------
def _tiny_run(words: Path, out: Path) -> list[str]:
    return [
        "data.domains=[{name: printed, train: 48, val: 8, test: 8}, {name: handwritten, kind: handwritten, "
        "train: 48, val: 8, test: 8, digit_fraction: 0.0}]",
        f"data.words={words}",
        "data.height=16",
        "data.width=48",
        "data.max_length=6",
        "teacher.args={channels: [8, 16], hidden: 16, embed: 8}",
        "student={arch: recognizer, args: {channels: [4, 8], hidden: 8, embed: 8}}",
        "teacher_train={epochs: 2, batch_size: 16, progress: false, log_every: 2}",
        "train={epochs: 2, batch_size: 16, progress: false, log_every: 2, save_every: 2}",
        "examples=2",
        "eval_batch_size=16",
        f"run.output_dir={out}",
    ]


def test_end_to_end_through_the_cli_with_ablations(words, tmp_path, capsys, monkeypatch):
    seen = batches_by_stage(monkeypatch)
    assert main(["unify", *_tiny_run(words, tmp_path), "run.run_name=tiny", "ablations=true"]) == 0
    # each specialist trains on its own domain only (48 images, 3 batches of 16 per epoch); students on both
    for index, domain in enumerate(["printed", "handwritten"]):
        assert len(seen[f"teacher-{domain}"]) == 6
        assert all((b["domain"] == index).all() for b in seen[f"teacher-{domain}"]), domain
    assert set(torch.cat([b["domain"] for b in seen["student"]]).tolist()) == {0, 1}
    out = capsys.readouterr().out
    assert "| student KD |" in out and "| KD without affinity |" in out
    run = tmp_path / "tiny"
    result = json.loads((run / "results.json").read_text())
    models = [r["model"] for r in result["rows"]]
    assert models == [
        "printed specialist",
        "handwritten specialist",
        "union, cross-entropy",
        "student KD",
        "KD without logits",
        "KD without hint",
        "KD without attention",
        "KD without affinity",
    ]
    # the rows are the saved models' readings of each domain's test images, scored
    from distill.config import load_config
    from distill.models import build_model
    from distill.recipes.unify import Config

    cfg = load_config(Config, run / "config.yaml")
    data = load_text_images(cfg.data)
    shape = {"num_chars": len(data.charset), "max_length": 6, "image_size": (16, 48)}
    for label, spec, stage in [("printed specialist", cfg.teacher, "teacher-printed"),
                               ("student KD", cfg.student_spec, "student")]:  # fmt: skip
        model = build_model(spec, **shape)
        model.load_state_dict(load_file(str(run / stage / "model.safetensors")))
        row = next(r for r in result["rows"] if r["model"] == label)
        for name, tensors, truth in zip(data.names, data.splits["test"], data.texts["test"]):
            got = read(model.eval(), tensors["pixel_values"], data.charset, "cpu")
            assert row[f"{name}_cer"] == round(character_error_rate(got, truth), 4), (label, name)
            assert row[f"{name}_word_accuracy"] == round(word_accuracy(got, truth), 4), (label, name)
        # what choices read: the validation split's score, not the test split's
        val = [read(model, t["pixel_values"], data.charset, "cpu") for t in data.splits["val"]]
        for metric, score in [("word_accuracy", word_accuracy), ("cer", character_error_rate)]:
            by_domain = [score(got, truth) for got, truth in zip(val, data.texts["val"])]
            assert row[f"val_mean_{metric}"] == round(sum(by_domain) / len(by_domain), 4), (label, metric)
    assert result["rows"][0]["params"] > result["rows"][3]["params"]  # the teachers are larger
    assert (run / "readings.png").is_file() and "readings.png" in (run / "report.md").read_text()
    logged = {
        k
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r.get("stage") == "student"
        for k in r
    }
    assert {"logits", "hint", "attention", "affinity", "ce"} <= logged  # each term logged on its own
    assert (run / "student-no-hint" / "model.safetensors").is_file()


@pytest.mark.slow
def test_killed_while_the_student_trains_resumes_to_the_same_result(words, tmp_path):
    over = _tiny_run(words, tmp_path)
    straight_killed_resumed([*DISTILL, "unify"], over, ENV, tmp_path, "checkpoints/student")
    a, b = (json.loads((tmp_path / n / "results.json").read_text())["rows"] for n in ("straight", "killed"))
    assert a == b
    assert strip(read_metrics(tmp_path / "killed")) == strip(read_metrics(tmp_path / "straight"))


# --- bad input: one line, a non-zero exit, no run directory -----------------------------------
@pytest.mark.parametrize(
    "make, word",
    [
        (lambda t, w: ["data.domains.0.fonts=[nosuch/Font.ttf]"], "nosuch/Font.ttf"),
        (lambda t, w: [f"data.domains.0.source={(t / 'imgs').mkdir() or t / 'imgs'}"], "labels.csv"),
        (lambda t, w: [f"data.domains.0.source={_bad_label(t)}"], "outside the character set"),
    ],
    ids=["missing font", "folder without labels", "label outside the charset"],
)
def test_bad_input_gives_one_line_and_leaves_nothing(make, word, words, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["unify", *_tiny_run(words, out), *make(tmp_path, words)]) == 2
    err = capsys.readouterr().err.strip()
    assert word in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def _bad_label(tmp: Path) -> Path:
    Image.fromarray(np.zeros((16, 48), np.uint8)).save(tmp / "x.png")
    (tmp / "labels.csv").write_text("image,text\nx.png,Hello!\n")
    return tmp / "labels.csv"


def test_cli_refuses_cached_signals_with_an_unrouted_teacher_reference(words, tmp_path, capsys):
    terms = (
        "objective=[{name: ce, loss: ce, inputs: [student.logits, labels]}, "
        "{name: kd, loss: kl, inputs: [student.logits, 'teacher[printed].logits']}]"
    )
    assert main(["unify", *_tiny_run(words, tmp_path / "runs"), terms]) == 2
    err = capsys.readouterr().err
    assert "teacher[routed]" in err and not (tmp_path / "runs").exists()
    assert subprocess.run([*DISTILL, "unify", "--help"], env=ENV, capture_output=True).returncode == 0


def test_the_unified_student_has_the_specialists_shape_unless_told(words, tmp_path):
    over = [o for o in _tiny_run(words, tmp_path) if not o.startswith("student=")]
    over += ["run.run_name=same", "union_baseline=false", "examples=0"]
    assert main(["unify", *over]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "same" / "results.json").read_text())["rows"]}
    assert rows["student KD"]["params"] == rows["printed specialist"]["params"]


def test_the_benchmarks_weight_choice_reads_only_the_validation_split():
    from conftest import load_benchmark

    bench = load_benchmark("unify_text")
    # validation prefers 2; the test split would prefer 0.5
    scores = {0.5: (0.30, 0.90), 1.0: (0.40, 0.50), 2.0: (0.45, 0.10)}
    picks = {
        s: {"rows": [{"model": "student KD", "val_mean_word_accuracy": v, "mean_word_accuracy": t}]}
        for s, (v, t) in scores.items()
    }
    selection, chosen = bench.choose(picks)
    assert chosen == 2.0 and selection == {"0.5": 0.30, "1": 0.40, "2": 0.45}


def test_the_benchmarks_verdicts_come_from_t_intervals_paired_by_seed():
    from conftest import load_benchmark

    bench = load_benchmark("unify_text")
    # per seed differences in points; at n = 3 the 95% t half-width is 4.303 / sqrt(3) = 2.484 standard deviations
    kd_minus = {
        "union": [3, 4, 5],
        "no-logits": [1.2, 2.2, 3.2],
        "no-hint": [-3, -4, -5],
        "no-attention": [2, 3, 4],
        "no-affinity": [0, 0, 0],
        "small": [6, 7, None],  # seed 2's small student has not landed: paired on seeds 0 and 1
    }
    own = {"printed": [-1, -2, -3], "handwritten": [0, -0.5, -1]}  # KD minus the specialist on its domain

    def kd(seed: int) -> dict:
        row = {"model": "student KD", "mean_word_accuracy": 0.5}
        return {"rows": [row | {f"{d}_word_accuracy": 0.6 + own[d][seed] / 100 for d in own}]}

    def other(minus: float) -> dict:  # each variant's run holds one student, its row named "student KD"
        acc = 0.5 - minus / 100
        return {"rows": [{"model": "student KD", "mean_word_accuracy": acc} | {f"{d}_word_accuracy": acc for d in own}]}

    specialists = {"info": {"domains": ["printed", "handwritten"]}, "rows": [
        {"model": f"{d} specialist", "printed_word_accuracy": 0.6 if d == "printed" else 0.01,
         "handwritten_word_accuracy": 0.6 if d == "handwritten" else 0.02} for d in own]}  # fmt: skip
    runs = {"select-x1": specialists, **{f"kd-s{s}": kd(s) for s in range(3)}}
    runs |= {f"{v}-s{s}": other(m) for v, ms in kd_minus.items() for s, m in enumerate(ms) if m is not None}
    c = bench.claims({"runs": runs, "specialists": "select-x1", "seeds": 3})
    assert c["premise"] and c["collapse"]["printed"] == {"printed": 0.6, "handwritten": 0.02}
    assert c["kd_vs_union"]["mean"] == 4.0 and c["kd_vs_union"]["ci95"] == 2.48
    assert c["kd_vs_union"]["verdict"] == "held"
    # mean 2.2 with sd 1: two standard deviations would call it a result, the t interval calls it a tie
    assert c["ablation"]["logits"]["verdict"] == "a tie (the interval holds 0)"
    assert c["ablation"]["attention"]["verdict"] == "contributes"
    assert c["ablation"]["hint"]["verdict"] == "hurts"
    assert c["ablation"]["affinity"]["verdict"] == "a tie (the interval holds 0)"
    # within 2 points: the interval's lower end at -2 or above (-2 - 2.48 fails; -0.5 - 1.24 holds)
    assert c["kd_vs_specialist"]["printed"]["within_2_points"] == "did not hold"
    assert c["kd_vs_specialist"]["handwritten"]["within_2_points"] == "held"
    assert c["full_vs_small"]["diffs"] == [6, 7] and c["full_vs_small"]["verdict"] == "higher"
    # one landed seed decides nothing: not "did not hold" from an infinite interval
    one = bench.claims({"runs": {k: v for k, v in runs.items() if not k.endswith(("-s1", "-s2"))},
                        "specialists": "select-x1", "seeds": 3})  # fmt: skip
    assert one["kd_vs_specialist"]["handwritten"]["within_2_points"] == "undecided (one seed)"
    assert one["kd_vs_specialist"]["handwritten"]["verdict"] == "undecided (one seed)"


def test_the_benchmark_reports_whether_the_specialists_beat_the_union_network():
    """KD toward specialists can beat the union network only if they read their domain better than it does."""
    from conftest import load_benchmark

    bench = load_benchmark("unify_text")
    domains = ("printed", "handwritten")
    info = {"domains": list(domains), "train_images": 8, "test_images": 2, "teacher_epochs": 1, "epochs": 1}
    specialists = {"name": "select-x1", "info": info, "rows": [
        {"model": f"{d} specialist", "printed_word_accuracy": 0.8 if d == "printed" else 0.01,
         "handwritten_word_accuracy": 0.5 if d == "handwritten" else 0.02} for d in domains]}  # fmt: skip
    # the union network: below the printed specialist at every seed, above the handwritten one at every seed
    union = [(0.75, 0.60), (0.76, 0.61), (0.74, 0.62)]

    def union_row(p: float, h: float) -> dict:
        return {"model": "student KD", "printed_word_accuracy": p, "handwritten_word_accuracy": h,
                "mean_word_accuracy": (p + h) / 2}  # fmt: skip

    runs = {"select-x1": specialists} | {f"union-s{s}": {"name": f"union-s{s}", "rows": [union_row(*u)]}
                                         for s, u in enumerate(union)}  # fmt: skip
    d = {"runs": runs, "specialists": "select-x1", "seeds": 3, "quick": False, "scales": [1.0]}
    c = bench.claims(d)
    assert c["union_vs_specialist"]["printed"]["diffs"] == [-5, -4, -6]
    assert c["union_vs_specialist"]["printed"]["verdict"] == "lower"
    assert c["union_vs_specialist"]["handwritten"]["verdict"] == "higher"
    md = bench.markdown(d | {"claims": c})
    assert "the premise does not hold" in md.split("handwritten specialist on handwritten")[1]
    assert "the premise holds" in md.split("printed specialist on printed")[1].split("\n")[0]


def test_the_benchmark_reads_back_only_runs_of_its_own_design():
    from conftest import load_benchmark

    bench = load_benchmark("unify_text")
    runs = {"select-x1": {}, "kd-s0": {"design": bench.DESIGN - 1}, "union-s0": {"design": bench.DESIGN - 1}}
    runs["kd-s1"] = {"design": bench.DESIGN}
    assert sorted(bench.current(runs)) == ["kd-s1"]  # earlier designs' union networks learnt from other data


def test_the_benchmark_pairs_students_only_under_one_set_of_specialists():
    """Specialists trained again (a clean clone, another CPU) are other teachers: a student of theirs is compared
    with a student of the same set, and what a comparison lacks is trained under the new set, KD included."""
    from conftest import load_benchmark

    bench = load_benchmark("unify_text")
    domains = ["printed", "handwritten"]

    def specialists(own: float, t: str | None) -> dict:
        rows = [{"model": f"{d} specialist", **{f"{o}_word_accuracy": own if o == d else 0.01 for o in domains}}
                for d in domains]  # fmt: skip
        return {"info": {"domains": domains}, "rows": rows} | ({"teachers": t} if t else {})

    def student(acc: float, t: str | None = None) -> dict:
        row = {"model": "student KD", "mean_word_accuracy": acc, **{f"{d}_word_accuracy": acc for d in domains}}
        return {"rows": [row]} | ({"teachers": t} if t else {})

    # the first set (no fingerprint recorded): KD 0.50 at every seed; the set "b": KD 0.60 at seed 1
    runs = {"select-x1": specialists(0.6, None), "select-x1-b": specialists(0.7, "b")}
    runs |= {f"kd-s{s}": student(0.50) for s in range(3)} | {f"union-s{s}": student(0.45) for s in range(3)}
    runs |= {"no-attention-s0": student(0.49), "no-attention-s1": student(0.56, "b")}
    d = {"runs": runs, "specialists": "select-x1", "seeds": 3}
    names = ["union", "kd", "no-attention"]
    assert bench.plan(runs, names, 3, "b") == [("kd-s1-b", "kd", 1), ("kd-s2-b", "kd", 2),
                                               ("no-attention-s2", "no-attention", 2)]  # fmt: skip
    assert bench.claims(d)["ablation"]["attention"] is None  # seed 1's runs had other specialists: one pair
    runs["kd-s1-b"] = student(0.60, "b")
    attention = bench.claims(d)["ablation"]["attention"]
    assert attention["diffs"] == [1, 4] and attention["specialists"] == ["first", "b"]
    assert bench.plan(runs, names, 3, "b") == [("kd-s2-b", "kd", 2), ("no-attention-s2", "no-attention", 2)]
    # each KD student against the specialists it distilled from: the first set's at every seed
    assert bench.claims(d)["kd_vs_specialist"]["printed"]["diffs"] == [-10, -10, -10]
    # a new set with nothing landed under it trains the seed's KD student once, beside the first variant needing it
    fresh = bench.plan({"select-x1": runs["select-x1"]}, names, 1, "c")
    assert fresh == [("kd-s0", "kd", 0), ("union-s0", "union", 0), ("no-attention-s0", "no-attention", 0)]


def test_the_benchmark_killed_on_a_new_machine_lands_each_run_and_trains_only_what_is_missing(tmp_path, monkeypatch):
    """`main()` on a clean clone whose specialists train again to another set: the selection is read back, the new
    set's KD students train beside the comparisons that lack a pair, each run lands as it finishes, and a rerun after
    a kill trains only what has not landed (the recipe faked: what it trains is recorded, not computed)."""
    from conftest import load_benchmark
    from distill.recipes import unify

    domains = ["printed", "handwritten"]
    info = {"domains": domains, "train_images": 8, "test_images": 2, "teacher_epochs": 1, "epochs": 1}

    def rows(student: float) -> list[dict]:
        spec = [{"model": f"{d} specialist", **{f"{o}_word_accuracy": 0.8 if o == d else 0.01 for o in domains}}
                for d in domains]  # fmt: skip
        acc = {f"{d}_word_accuracy": student for d in domains} | {"mean_word_accuracy": student}
        return [*spec, {"model": "student KD", **acc, "val_mean_word_accuracy": student}]

    def first(student: float, **more) -> dict:  # a run landed under the first set (no fingerprint), seed 0
        return {"design": 3, "seed": 0, "rows": rows(student), "info": info, "curves": {}} | more

    results = tmp_path / "results"
    results.mkdir()
    landed = {
        "select-x0.5": first(0.5, name="select-x0.5"),
        "select-x1": first(0.4, name="select-x1"),
        "kd-s0": first(0.5, name="kd-s0", same_as="select-x0.5"),
        "kd-s1": first(0.5, name="kd-s1", seed=1),
        "union-s0": first(0.45, name="union-s0"),
        "union-s1": first(0.45, name="union-s1", seed=1),
    }
    (results / "unify_text.json").write_text(json.dumps({"runs": landed}))
    trained: list[str] = []
    kill_at: list[int] = [3]  # the third training run dies

    class Done:
        def __init__(self, student: float) -> None:
            self.student = student

        def to_json(self) -> dict:
            return {"rows": rows(self.student), "info": info}

    def fake_run(cfg, resume=None):
        run_dir = Path(cfg.run.output_dir) / cfg.run.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        if kill_at and len(trained) + 1 == kill_at[0]:
            kill_at.clear()
            raise KeyboardInterrupt
        trained.append(cfg.run.run_name)
        if not cfg.teacher_checkpoints:  # the specialists train: weights another CPU rounds differently
            for d in domains:
                (run_dir / f"teacher-{d}").mkdir(exist_ok=True)
                (run_dir / f"teacher-{d}" / "model.safetensors").write_bytes(f"new {d}".encode())
        (run_dir / "metrics.jsonl").write_text(json.dumps({"stage": "student", "samples_seen": 360,
                                                           "speed/samples_per_s": 1.0}) + "\n")  # fmt: skip
        dropped = {t.name for t in cfg.objective} ^ {"ce", "hint", "logits", "attention", "affinity"}
        return Done(0.6 - 0.01 * len(dropped) - 0.05 * (cfg.student is not None))

    def main(bench) -> None:
        monkeypatch.setattr(bench, "ROOT", tmp_path / "runs" / "bench-unify-d3")
        monkeypatch.setattr(bench, "RESULTS", results)
        monkeypatch.setattr(sys.modules["common"], "RESULTS", results)
        monkeypatch.setattr(bench, "plot", lambda d, name="unify_text": None)
        monkeypatch.setattr(sys, "argv", ["unify_text.py", "--seeds", "2", "--scales", "0.5,1"])
        bench.main()

    monkeypatch.setattr(unify, "run", fake_run)
    bench = load_benchmark("unify_text")
    with pytest.raises(KeyboardInterrupt):
        main(bench)
    t = bench.fingerprint(tmp_path / "runs" / "bench-unify-d3" / "select-x0.5")
    # the specialists (their run's student is the new set's kd-s0) and no-hint-s0 landed (union had its pairs);
    # kd-s1 of the new set died
    assert trained == ["select-x0.5", "no-hint-s0"]
    runs = json.loads((results / "unify_text.json").read_text())["runs"]
    assert {k for k in runs if k not in landed} == {f"select-x0.5-{t}", f"kd-s0-{t}", "no-hint-s0"}
    assert runs[f"kd-s0-{t}"]["same_as"] == f"select-x0.5-{t}" and runs["select-x0.5"] == landed["select-x0.5"]

    trained.clear()
    main(load_benchmark("unify_text"))  # a fresh process: the specialists' weights are still in runs/
    terms = [f"no-{term}" for term in ("hint", "logits", "attention", "affinity")]
    assert trained == [f"kd-s1-{t}", "no-hint-s1", *(f"{v}-s{s}" for v in [*terms[1:], "small"] for s in (0, 1))]
    d = json.loads((results / "unify_text.json").read_text())
    assert d["chosen_scale"] == 0.5 and d["selection"] == {"0.5": 0.5, "1": 0.4}  # read back, not trained again
    hint = d["claims"]["ablation"]["hint"]
    assert hint["diffs"] == [1, 1] and hint["specialists"] == [t, t]
    assert d["claims"]["kd_vs_union"]["diffs"] == [5, 5]  # the first set's pairs
    assert d["claims"]["full_vs_small"]["diffs"] == [5, 5]
