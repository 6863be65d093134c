# SPDX-License-Identifier: GPL-3.0-or-later
"""Endurance run on a real ComfyUI server: N alternating API prompts (merged, bypass, T-LoRA with the wrapper,
stacks, the strength node, different files and strengths, and the bare model), checking after every prompt that
the output equals the same prompt run fresh (no stale state), and that the server's RSS stays bounded after a
warm-up. Used by ``test_endurance.py`` (short, CI) and ``bench/endurance.py`` (long).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import rel_prompts as rp


def configs(good: dict) -> list[tuple[str, dict]]:
    """(name, graph kwargs) of the alternating prompts; ``good`` maps algo -> file name in models/loras."""
    return [
        ("locon_merged", {"loras": [(good["locon"], 0.8, "merged")], "seed": 21}),
        ("lokr_bypass", {"loras": [(good["lokr"], 1.0, "bypass")], "seed": 22}),
        ("tlora_wrapper", {"loras": [(good["tlora"], 1.0, "auto")], "tlora": {"min_rank": 2, "tlora_alpha": 2.0},
                           "seed": 23}),
        ("stack_loha_lokr", {"loras": [(good["loha"], -0.6, "merged"), (good["lokr"], 0.5, "bypass")], "seed": 24}),
        ("strength_node", {"loras": [(good["locon"], 0.5, "merged")], "strength_node": 1.3, "seed": 25}),
        ("tlora_default", {"loras": [(good["tlora"], 0.7, "bypass")], "seed": 26}),
        ("bare_model", {"loras": [], "seed": 27}),
    ]


@dataclass
class EnduranceResult:
    prompts: int = 0
    seconds: float = 0.0
    rss_warm: int = 0
    rss_end: int = 0
    rss_max: int = 0
    rss_series: list = field(default_factory=list)
    mismatches: list = field(default_factory=list)  # (index, config name, max abs diff)

    @property
    def growth(self) -> float:
        return (self.rss_end - self.rss_warm) / self.rss_warm if self.rss_warm else 0.0

    def summary(self) -> dict:
        return {"prompts": self.prompts, "seconds": round(self.seconds, 1),
                "seconds_per_prompt": round(self.seconds / max(self.prompts, 1), 3),
                "rss_warm_mib": round(self.rss_warm / 2 ** 20, 1), "rss_end_mib": round(self.rss_end / 2 ** 20, 1),
                "rss_max_mib": round(self.rss_max / 2 ** 20, 1), "rss_growth_pct": round(100 * self.growth, 2),
                "mismatches": self.mismatches[:10]}


def run_endurance(server, good: dict, n: int, *, warmup: int | None = None, steps: int = 2, size: int = 32,
                  log=None) -> EnduranceResult:
    """References first (each config after ``POST /free``: a fresh run), then ``n`` prompts cycling through the
    configs; the RSS baseline is taken after ``warmup`` prompts (default: one full cycle), the end value after
    the last prompt (median of the last few samples, to ignore one transient peak)."""
    cfgs = configs(good)
    warmup = len(cfgs) if warmup is None else warmup
    refs = {}
    for name, kw in cfgs:
        rp.free(server)
        refs[name], _ = rp.run_latent(server, rp.graph(steps=steps, size=size, prefix=f"end_{name}", **kw))
    res = EnduranceResult()
    t0 = time.monotonic()
    for i in range(n):
        name, kw = cfgs[i % len(cfgs)]
        lat, _ = rp.run_latent(server, rp.graph(steps=steps, size=size, prefix=f"end_{name}", **kw))
        if not lat.equal(refs[name]):
            res.mismatches.append((i, name, float((lat.float() - refs[name].float()).abs().max())))
        rss = rp.rss_bytes(server.pid)
        res.rss_series.append(rss)
        res.rss_max = max(res.rss_max, rss)
        if i + 1 == warmup:
            res.rss_warm = rss
        if log and (i + 1) % max(1, n // 10) == 0:
            log(f"endurance {i + 1}/{n}: rss {rss / 2 ** 20:.1f} MiB, mismatches {len(res.mismatches)}")
    res.prompts = n
    res.seconds = time.monotonic() - t0
    tail = sorted(res.rss_series[-3:])
    res.rss_end = tail[len(tail) // 2] if tail else 0
    if not res.rss_warm and res.rss_series:
        res.rss_warm = res.rss_series[0]
    return res
