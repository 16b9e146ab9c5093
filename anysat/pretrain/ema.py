"""EMA teacher for JEPA pretraining.

The teacher is a deep copy of the student encoder taken at construction; after every step its
parameters follow ``θ̄ ← m·θ̄ + (1 − m)·θ`` with the linear momentum schedule
``m_i = m0 + i·(m1 − m0)/total_steps`` (official: 0.996 → 1.0 over the planned run).

Deviation from the official code: the official teacher runs in train mode, so LTAE dropout
(p = 0.2 for several sensors) and the temporal attention dropout (0.1) perturb the targets. Here the
teacher is always in eval mode — ``.train()`` on it (or on a parent module) is a no-op — so the
targets are deterministic functions of the input. When the update runs relative to the optimiser
step is the caller's choice; the official code updates before the optimiser step (the teacher lags
one step), calling :meth:`EMATeacher.update` after ``optimizer.step()`` avoids the lag.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ema_momentum", "EMATeacher"]


def ema_momentum(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """``start + step·(end − start)/total_steps``, held at ``end`` once ``step ≥ total_steps``."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if step < 0:
        raise ValueError("step must be >= 0")
    step = min(int(step), int(total_steps))
    return start + step * (end - start) / total_steps


class EMATeacher(nn.Module):
    """A frozen, eval-mode copy of ``student`` updated by exponential moving average."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(student)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "EMATeacher":
        # Stay in eval mode whatever the parent asks: no dropout in the targets.
        self.training = False
        self.module.eval()
        return self

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """``θ̄ ← m·θ̄ + (1 − m)·θ`` over all parameters (matched by name); buffers are copied."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        s_params = dict(student.named_parameters())
        for name, t in self.module.named_parameters():
            s = s_params[name].detach()
            if momentum == 1.0:
                continue
            t.mul_(momentum).add_(s.to(t.dtype), alpha=1.0 - momentum)
        s_bufs = dict(student.named_buffers())
        for name, t in self.module.named_buffers():
            if name in s_bufs:
                t.copy_(s_bufs[name])

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)
