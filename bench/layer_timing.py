# SPDX-License-Identifier: GPL-3.0-or-later
"""Layer-level timing of bypass adapters: the adapter's own work on each adapted layer, on the layer's real input
and base output, many runs, keeping the fastest.

A whole denoise step on a shared 2-core machine varies by ~10 % (IQR) from one step to the next, and even the
fastest of several runs of one large base GEMM moves by a few percent, while the overheads to resolve are 1-10 % of
a step. So the adapter is timed alone: its forward hook (ours) or its module's forward with the base forward
replaced by the saved base output (LyCORIS's), on inputs captured from a real step; the base layer is timed
separately, for scale. Interference only ever slows a run down: minima are the estimate.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable


@dataclass
class LayerPair:
    """One adapted layer: `base(x)` is the base layer alone, `adapter(x)` the adapter's extra work only;
    `reset()` (untimed) runs before each `adapter` call, e.g. to restore an output it accumulates into."""

    name: str
    x: object  # the captured input tensor
    base: Callable
    adapter: Callable
    reset: Callable | None = None


@contextlib.contextmanager
def capture_inputs(modules: dict, store: dict):
    """Within the block, the first positional input of each call of `modules[name]` is kept as `store[name]` (the
    first call only: a detached clone)."""
    handles = []

    def hook(name):
        def pre(_module, args):
            if name not in store and args:
                store[name] = args[0].detach().clone()
        return pre

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def time_pairs(clock, pairs: list[LayerPair], reps: int, best: dict | None = None) -> dict:
    """Fastest time (seconds) of each layer's base and adapter over `reps` interleaved runs of each. `best`
    ({name: [base, adapter]}, updated in place and returned) carries the minima over earlier calls (rounds), so a
    few runs per round add up; the first calls' slower runs simply lose."""
    best = {} if best is None else best
    for _ in range(reps):
        for p in pairs:
            slot = best.setdefault(p.name, [float("inf"), float("inf")])
            for j, fn in ((0, p.base), (1, p.adapter)):
                if j == 1 and p.reset is not None:
                    p.reset()
                clock.sync()
                t0 = clock.mark()
                fn(p.x)
                t1 = clock.mark()
                clock.sync()
                slot[j] = min(slot[j], clock.elapsed(t0, t1))
    return best


def totals(best: dict) -> tuple[float, float]:
    """(Σ fastest base, Σ fastest adapter) in seconds over the layers of a `time_pairs` result."""
    return sum(v[0] for v in best.values()), sum(v[1] for v in best.values())
