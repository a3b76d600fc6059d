"""Self-consistency aggregation: majority vote, agreement ratio, soft score; coverage / precision."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Vote:
    label: str | None  # the majority label; None when nothing parsed or the top labels tie
    agreement: float  # votes for the most-voted label / all samples (unparseable ones count against it)
    soft: float | None  # mean value of the parsed labels (e.g. bullish +1, neutral 0, bearish -1): defined on
    # a tie too (a 4-4 split of +1 and -1 scores 0, halfway), so a regression student keeps tied texts
    parsed: int  # samples that named exactly one label
    samples: int


def vote(labels: Sequence[str | None], values: dict[str, float]) -> Vote:
    """Aggregate one item's K parsed answers."""
    named = [label for label in labels if label is not None]
    if not named:
        return Vote(None, 0.0, None, 0, len(labels))
    counts = Counter(named).most_common()
    top, n = counts[0]
    tie = len(counts) > 1 and counts[1][1] == n
    soft = sum(values[label] for label in named) / len(named)
    return Vote(None if tie else top, n / len(labels), soft, len(named), len(labels))


def coverage_precision(
    votes: Sequence[Vote], gold: Sequence[str | None], thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """For each agreement threshold: the share of items kept (coverage) and how many of them are right."""
    rows = []
    for t in thresholds:
        kept = [(v.label, g) for v, g in zip(votes, gold) if v.label is not None and v.agreement >= t]
        right = sum(label == g for label, g in kept)
        rows.append(
            {
                "threshold": t,
                "coverage": len(kept) / max(len(votes), 1),
                "precision": right / len(kept) if kept else float("nan"),
                "kept": len(kept),
            }
        )
    return rows


def scores(pred: Sequence[str | None], gold: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over `labels`; a missing prediction (None) counts as wrong."""
    n = len(gold)
    acc = sum(p == g for p, g in zip(pred, gold)) / max(n, 1)
    f1s = []
    for c in labels:
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": acc, "f1": sum(f1s) / len(f1s)}
