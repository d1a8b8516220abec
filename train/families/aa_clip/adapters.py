"""The residual adapter of SPEC section 2 and the bias-free projections of sections 3-4."""
from __future__ import annotations

import torch
from torch import nn


class ResidualAdapter(nn.Module):
    """y = LeakyReLU(W x), rescaled per token to the norm of x; the caller blends it with x."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width, bias=False)
        self.act = nn.LeakyReLU()
        nn.init.xavier_uniform_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.fc(x))
        return y * (x.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True))


def blend(adapter: ResidualAdapter, x: torch.Tensor, lam: float) -> torch.Tensor:
    """x <- lambda * adapter(x) + (1 - lambda) * x: what the next block receives."""
    return lam * adapter(x) + (1.0 - lam) * x


class Projection(nn.Module):
    """Linear without bias, optionally followed by LeakyReLU (the text projection always has it)."""

    def __init__(self, width_in: int, width_out: int, relu: bool):
        super().__init__()
        self.fc = nn.Linear(width_in, width_out, bias=False)
        self.act = nn.LeakyReLU() if relu else nn.Identity()
        nn.init.xavier_uniform_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))
