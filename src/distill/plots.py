"""Figures a recipe draws from its own outputs (the report draws the metric curves)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor


def image_grid(path: str | Path, pixels: Tensor, labels: Tensor, classes: list[str], max_per_class: int = 10) -> Path:
    """A PNG grid: one row per class, up to `max_per_class` images each; pixels (N, C, H, W) in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = [(c, (labels == c).nonzero().flatten()[:max_per_class]) for c in range(len(classes))]
    rows = [(c, idx) for c, idx in rows if len(idx)]
    cols = max(len(idx) for _, idx in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.9 * cols + 1.2, 0.9 * len(rows)), squeeze=False)
    for r, (c, idx) in enumerate(rows):
        for j in range(cols):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(idx):
                img = pixels[idx[j]].detach().cpu().float().permute(1, 2, 0).numpy()
                ax.imshow(
                    img[..., 0] if img.shape[-1] == 1 else img,
                    cmap="gray" if img.shape[-1] == 1 else None,
                    vmin=0,
                    vmax=1,
                )
            if j == 0:
                ax.set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout(pad=0.2)
    return save_figure(fig, path, dpi=100)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG atomically (a temporary name, then a rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path
