"""An attention encoder-decoder text recogniser, the family of "Text is Text, No Matter What" (Bhunia et
al., ICCV 2021) and of SAR / ASTER: a CNN encodes the image to a 2-D feature map, and a GRU decoder with
2-D additive attention emits one character per step until an end token.

Token ids: 0 is the end token, 1..num_chars the characters, num_chars + 1 the start token (decoder input
only). With `decoder_input_ids` (teacher forcing: the start token, then the true characters) the model
returns one step per input token; without it, it decodes greedily for `max_length + 1` steps.

Two identity submodules expose what the distillation losses read, through the usual taps:
    attention   (B, T, H', W')   each step's 2-D attention map
    glimpses    (B, T, C)        each step's attention-weighted feature: the character-localised feature
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

END = 0


def _block(cin: int, cout: int, pool: tuple[int, int]) -> list[nn.Module]:
    conv = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    conv += [nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return [*conv, nn.MaxPool2d(pool)]


class Recognizer(nn.Module):
    def __init__(
        self,
        num_chars: int = 36,
        max_length: int = 10,
        image_size: Sequence[int] = (32, 128),
        channels: Sequence[int] = (32, 64, 128),
        hidden: int = 128,
        embed: int = 32,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError("a recogniser needs at least 2 encoder blocks")
        # halve height and width twice, then height only: a wide map keeps one column per ~4 pixels of text
        pools = [(2, 2), (2, 2)] + [(2, 1)] * (len(channels) - 2)
        layers: list[nn.Module] = []
        for cin, cout, pool in zip([in_channels, *channels[:-1]], channels, pools):
            layers += _block(cin, cout, pool)
        self.encoder = nn.Sequential(*layers)
        h, w = image_size
        for ph, pw in pools:
            h, w = h // ph, w // pw
        if h < 1 or w < 1:
            raise ValueError(f"images of {tuple(image_size)} are too small for {len(channels)} encoder blocks")
        c = channels[-1]
        self.num_chars, self.max_length, self.start = num_chars, max_length, num_chars + 1
        self.key = nn.Conv2d(c, hidden, 1)
        self.position = nn.Parameter(torch.zeros(1, hidden, h, w))  # where on the map: attention can step along
        self.query = nn.Linear(hidden, hidden, bias=False)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.init_state = nn.Linear(c, hidden)
        self.embed = nn.Embedding(num_chars + 2, embed)
        self.cell = nn.GRUCell(embed + c, hidden)
        self.out = nn.Linear(hidden + c, num_chars + 1)
        self.attention = nn.Identity()
        self.glimpses = nn.Identity()

    def forward(self, pixel_values: Tensor, decoder_input_ids: Tensor | None = None) -> Tensor:
        x = pixel_values
        if x.dtype == torch.uint8:  # images are stored as bytes: a quarter of the memory of floats
            x = x.float() / 255.0
        feats = self.encoder(x * 2.0 - 1.0)
        b, _, h, w = feats.shape
        values = feats.flatten(2).transpose(1, 2)  # (B, N, C)
        keys = (self.key(feats) + self.position).flatten(2).transpose(1, 2)  # (B, N, hidden)
        state = torch.tanh(self.init_state(values.mean(1)))
        forced = decoder_input_ids
        steps = forced.shape[1] if forced is not None else self.max_length + 1
        prev = forced[:, 0] if forced is not None else torch.full((b,), self.start, device=x.device)
        logits, maps, glimpses = [], [], []
        ended = torch.zeros(b, dtype=torch.bool, device=x.device)
        for t in range(steps):
            alpha = self.score(torch.tanh(keys + self.query(state)[:, None])).squeeze(-1).softmax(-1)
            glimpse = torch.bmm(alpha[:, None], values).squeeze(1)
            state = self.cell(torch.cat([self.embed(prev), glimpse], -1), state)
            step = self.out(torch.cat([state, glimpse], -1))
            logits.append(step)
            maps.append(alpha)
            glimpses.append(glimpse)
            if forced is not None:
                prev = forced[:, t + 1] if t + 1 < steps else prev
            else:
                prev = step.argmax(-1)
                ended |= prev == END
                if bool(ended.all()):
                    break
        self.attention(torch.stack(maps, 1).view(b, len(maps), h, w))
        self.glimpses(torch.stack(glimpses, 1))
        return torch.stack(logits, 1)
