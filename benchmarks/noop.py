"""A no-op Problem for measuring the service's own overhead (the trial does almost no arithmetic)."""

from dataclasses import dataclass

import torch

from workers import Problem


@dataclass
class _Batch:
    y: torch.Tensor


class NoOp(Problem):
    """T(u) = u·w with a scalar w; one-element data; metric ``loss``."""

    def __init__(self, x: float = 0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.batch = _Batch(torch.full((1, 1), float(x)))

    def init(self, batch):
        return batch.y.clone()

    def operator(self, u, batch, k):
        return u * self.w

    def upper_loss(self, u, batch):
        return (u**2).sum()

    def metrics(self, u, batch):
        return {"loss": float(u.detach().sum())}

    def batches(self, split):
        while True:
            yield self.batch
            if split != "train":
                return
