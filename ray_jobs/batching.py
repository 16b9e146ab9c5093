"""Batch size per optimisation step: fixed per dataset, or from a token budget.

The encoder's cost grows with the tokens it attends over, and AnySat's token count per sample grows
with the square of tile size / patch size: a PASTIS-HD or S2NAIP-Urban sample has 16× more tokens at
40 m than at 160 m. With ``data.tokens_per_batch`` set, step *k* takes
``max(1, tokens_per_batch // tokens_per_sample(patch size of step k))`` samples, so every step costs
about the same compute and memory whatever the draw. The size is a pure function of the schedule entry
(:class:`ray_jobs.schedule.Schedule`: seed and step) and of the plan, identical on every rank, so DDP
ranks stay in step and a resumed run continues with the same sizes; streams count consumed tiles, not
batches (:meth:`ray_jobs.data.StoreStream.feed`).
"""

from __future__ import annotations

from ray_jobs.plan import DataPlan

__all__ = ["step_batch_size", "batch_table"]


def step_batch_size(plan: DataPlan, patch_size_m: int, tokens_per_batch: int | None) -> int:
    """Samples of ``plan``'s dataset in a step drawn at ``patch_size_m``."""
    if not tokens_per_batch:
        return int(plan.batch_size)
    return max(1, int(tokens_per_batch) // plan.tokens_per_sample(patch_size_m))


def batch_table(plans: dict[str, DataPlan], tokens_per_batch: int | None) -> dict[str, dict[int, tuple[int, int]]]:
    """Dataset -> patch size -> (batch size, tokens per batch): what the run logs before its first step."""
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for n, p in plans.items():
        sizes = {ps: step_batch_size(p, ps, tokens_per_batch) for ps in p.patch_sizes_m}
        out[n] = {ps: (b, b * p.tokens_per_sample(ps)) for ps, b in sizes.items()}
    return out
