"""Multi-step arithmetic word problems with gold decompositions, in the spirit of GSM8K's Socratic annotation:
each problem has its question, its numeric answer, a worked solution of one line per step and, per step, a
sub-question whose answer is that line. Made from a seed at run time (never data in the repository), so
thousands of training problems cost no teacher time.

A problem is a person, a kind of item and a start count, then a chain of operations (add, sub, mul, div),
each said one of two ways. The test split checks composition: its problems each hold at least one ordered
pair of consecutive operations (`held_out`, e.g. mul then sub) that no training or validation problem holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from distill.errors import DistillError
from distill.reasoning.problems import FINAL, Problem

NAMES = [
    tuple(w.split(":"))
    for w in (
        "Ann:she Ben:he Cara:she Dev:he Ema:she Finn:he Gia:she Hugo:he Iris:she Jon:he Kira:she Leo:he"
        " Mia:she Nils:he Olga:she Paul:he Rosa:she Sam:he Tara:she Umar:he Vera:she Wes:he Yara:she Zack:he"
    ).split()
]
ITEMS = (
    "apples marbles stamps shells pencils stickers cookies coins cards books beads eggs toys plums nuts ribbons"
    " buttons rocks"
).split()
OPS = ("add", "sub", "mul", "div")
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
FRACTION = {2: "half", 3: "third", 4: "quarter", 5: "fifth"}

# per operation, two phrasings: (sentence of the problem, sub-question, solution line)
PHRASES: dict[str, list[tuple[str, str, str]]] = {
    "add": [
        (
            "{He} buys {b} more {item}.",
            "How many {item} does {name} have after buying {b} more?",
            "{name} has {x} + {b} = {y} {item} after buying more.",
        ),
        (
            "{Friend} gives {him} {b} {item}.",
            "How many {item} does {name} have after {friend} gives {him} {b}?",
            "{name} has {x} + {b} = {y} {item} after the gift.",
        ),
    ],
    "sub": [
        (
            "{He} gives {b} {item} to {friend}.",
            "How many {item} does {name} have after giving {b} to {friend}?",
            "{name} has {x} - {b} = {y} {item} left.",
        ),
        (
            "{He} loses {b} of them.",
            "How many {item} are left after {name} loses {b}?",
            "{name} has {x} - {b} = {y} {item} after losing some.",
        ),
    ],
    "mul": [
        (
            "{He} trades each of them for {b} new ones.",
            "How many {item} does {name} get by trading each for {b}?",
            "{name} gets {x} * {b} = {y} {item} from the trade.",
        ),
        (
            "Then {his} {item} grow to {b} times as many.",
            "How many {item} does {name} have once there are {b} times as many?",
            "{name} has {x} * {b} = {y} {item} now.",
        ),
    ],
    "div": [
        (
            "{He} splits them into {b} equal piles and keeps one pile.",
            "How many {item} are in one of the {b} piles?",
            "{name} keeps {x} / {b} = {y} {item} in one pile.",
        ),
        (
            "{He} keeps only a {fraction} of them.",
            "How many {item} does {name} keep if {he} keeps a {fraction}?",
            "{name} keeps {x} / {b} = {y} {item}.",
        ),
    ],
}
QUESTION = "How many {item} does {name} have at the end?"


@dataclass(frozen=True)
class Pairs:
    """Ordered pairs of consecutive operations ('mul-sub'): the test split's, the others' never."""

    held_out: frozenset[tuple[str, str]]

    @classmethod
    def parse(cls, names: list[str]) -> Pairs:
        pairs = set()
        for n in names:
            a, _, b = n.partition("-")
            if a not in OPS or b not in OPS:
                raise DistillError(f"held-out pair {n!r}: write two of {', '.join(OPS)} joined by '-' (e.g. mul-sub)")
            pairs.add((a, b))
        return cls(frozenset(pairs))

    def holds(self, ops: list[str]) -> bool:
        return any(p in self.held_out for p in zip(ops, ops[1:]))


def generate_splits(
    sizes: dict[str, int], seed: int, steps: tuple[int, int], held_out: list[str]
) -> dict[str, list[Problem]]:
    """{split: problems}: 'test' problems each hold a held-out pair, the other splits none; no question repeats
    across splits. Deterministic in the seed."""
    lo, hi = steps
    if not 1 <= lo <= hi:
        raise DistillError(f"data.steps {list(steps)}: need 1 <= fewest <= most steps")
    pairs = Pairs.parse(held_out)
    if sizes.get("test") and (hi < 2 or not pairs.held_out):
        raise DistillError("the test split needs held-out pairs (data.held_out) and problems of 2+ steps")
    rng, seen = random.Random(seed), set()
    out: dict[str, list[Problem]] = {}
    for split, size in sizes.items():
        out[split], tries = [], 0
        while len(out[split]) < size:
            tries += 1
            if tries > 50 * size + 1000:
                raise DistillError(f"cannot make {size} distinct {split} problems of {lo}-{hi} steps; ask for fewer")
            ops = _ops(rng, rng.randint(max(lo, 2 if split == "test" else 1), hi), pairs, split == "test")
            p = _problem(rng, ops, f"arith{seed}-{split}-{len(out[split])}")
            if p is not None and p.question not in seen:
                seen.add(p.question)
                out[split].append(p)
    return out


def _ops(rng: random.Random, n: int, pairs: Pairs, test: bool) -> list[str]:
    while True:
        ops = [rng.choice(OPS) for _ in range(n)]
        if pairs.holds(ops) == test:
            return ops


def _problem(rng: random.Random, ops: list[str], pid: str) -> Problem | None:
    """One problem, or None when the operations cannot keep every count a whole number in 1..999."""
    (name, he), item = rng.choice(NAMES), rng.choice(ITEMS)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    words = {
        "name": name,
        "he": he,
        "item": item,
        "friend": friend,
        "He": he.capitalize(),
        "Friend": friend,
        "him": "him" if he == "he" else "her",
        "his": "his" if he == "he" else "her",
    }
    x = rng.randint(2, 40)
    sentences, subqs, lines = [f"{name} has {x} {item}."], [], []
    for op in ops:
        b = _operand(rng, op, x)
        if b is None:
            return None
        y = {"add": x + b, "sub": x - b, "mul": x * b, "div": x // b}[op]
        sentence, subq, line = rng.choice(PHRASES[op])
        w = {**words, "x": x, "b": b, "y": y, "fraction": FRACTION.get(b, "")}
        sentences.append(sentence.format(**w))
        subqs.append(subq.format(**w))
        lines.append(line.format(**w))
        x = y
    sentences.append(QUESTION.format(**words))
    solution = "\n".join(lines) + f"\n{FINAL} {x}"
    return Problem(pid, " ".join(sentences), float(x), solution, tuple(subqs))


def _operand(rng: random.Random, op: str, x: int) -> int | None:
    if op == "add":
        return rng.randint(2, 30)
    if op == "sub":
        return rng.randint(1, x - 1) if x > 1 else None
    if op == "mul":
        ok = [b for b in range(2, 6) if x * b <= 999]
        return rng.choice(ok) if ok else None
    ok = [b for b in FRACTION if x % b == 0]  # div: a whole number of items per pile
    return rng.choice(ok) if ok else None
