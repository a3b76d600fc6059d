"""Greedy, batched reading of text images, its scores per domain, and a figure of example readings."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from distill.textrec.data import TextImages
from distill.textrec.text import Charset, character_error_rate, word_accuracy


@torch.no_grad()
def read(model: nn.Module, pixels: Tensor, charset: Charset, device: torch.device, batch_size: int = 500) -> list[str]:
    """What the model reads in each image: greedy decoding (no teacher forcing), cut at the end token."""
    was_training = model.training
    model.eval()
    out: list[str] = []
    for chunk in pixels.split(batch_size):
        out += charset.decode(model(chunk.to(device)).argmax(-1).cpu())
    model.train(was_training)
    return out


def scores(
    model: nn.Module, data: TextImages, split: str, device: torch.device, batch_size: int = 500
) -> dict[str, float]:
    """Word accuracy and character error rate on each domain's `split`, and the mean word accuracy."""
    out: dict[str, float] = {}
    for name, tensors, truth in zip(data.names, data.splits[split], data.texts[split]):
        predicted = read(model, tensors["pixel_values"], data.charset, device, batch_size)
        out[f"{name}_word_accuracy"] = word_accuracy(predicted, truth)
        out[f"{name}_cer"] = character_error_rate(predicted, truth)
    out["mean_word_accuracy"] = sum(out[f"{n}_word_accuracy"] for n in data.names) / len(data.names)
    return out


def readings_figure(path: str | Path, images: Tensor, truth: list[str], readings: dict[str, list[str]]) -> Path:
    """One row per image: the image, then each model's reading (green when right, red when wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    from distill.plots import save_figure

    models = list(readings)
    n = len(models)
    fig, axes = plt.subplots(
        len(images),
        2,
        figsize=(2.6 + 1.3 * n, 0.62 * len(images) + 0.6),
        gridspec_kw={"width_ratios": [2.4, 1.3 * n]},
        squeeze=False,
    )
    for r, (img, text) in enumerate(zip(images, truth)):
        left, right = axes[r]
        left.imshow(img[0].float().numpy(), cmap="gray", vmin=0, vmax=255)
        left.set_title(text, fontsize=7, loc="left", pad=1)
        right.set_xlim(0, n)
        for j, m in enumerate(models):
            said = readings[m][r]
            right.text(
                j + 0.05,
                0.5,
                said or "(nothing)",
                fontsize=7,
                va="center",
                color="green" if said == text else "red",
                family="monospace",
            )
            if r == 0:
                right.text(j + 0.05, 1.2, textwrap.fill(m, 16), fontsize=7, va="bottom", weight="bold")
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
    fig.tight_layout(pad=0.3)
    return save_figure(fig, path, dpi=110)
