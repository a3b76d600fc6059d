"""ZCA whitening in torch, with its inverse (to save and look at whitened images)."""

from __future__ import annotations

import torch
from torch import Tensor


class ZCA:
    """x -> (x - mean) W with W = U diag(1 / sqrt(S + eps)) U^T from the covariance's eigendecomposition.

    `eps` regularises small eigenvalues (0.1 in the MTT/KIP code, on per-channel normalised images).
    """

    def __init__(self, mean: Tensor, whiten: Tensor, unwhiten: Tensor) -> None:
        self.mean, self.whiten, self.unwhiten = mean, whiten, unwhiten

    @classmethod
    def fit(cls, x: Tensor, eps: float = 0.1) -> ZCA:
        flat = x.reshape(len(x), -1).double()
        mean = flat.mean(0)
        centred = flat - mean
        cov = centred.T @ centred / len(flat)
        s, u = torch.linalg.eigh(cov)
        s = s.clamp_min(0) + eps
        whiten = (u * s.rsqrt()) @ u.T
        unwhiten = (u * s.sqrt()) @ u.T
        return cls(mean.float(), whiten.float(), unwhiten.float())

    def __call__(self, x: Tensor, batch: int = 4096) -> Tensor:
        flat = x.reshape(len(x), -1)
        out = torch.cat([(chunk - self.mean) @ self.whiten for chunk in flat.split(batch)]) if len(x) else flat
        return out.reshape(x.shape)

    def inverse(self, x: Tensor) -> Tensor:
        flat = x.reshape(len(x), -1)
        return (flat @ self.unwhiten + self.mean).reshape(x.shape)

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "whiten": self.whiten, "unwhiten": self.unwhiten}
