# SPDX-License-Identifier: GPL-3.0-or-later
"""T-LoRA parity (issue 5 §7): the loader's default schedule, driven by the APPLY_MODEL wrapper from ComfyUI's
sigma, against SimpleTuner validation (LyCORIS 4.1.3 TLoraModule live forward with set_timestep_mask) on the
Flux 2 and SDXL twins:

- single model calls through the real sampling stack (run_comfy) at t in {999, 750, 500, 250, 0};
- a real sampling loop (euler through comfy.sample.sample), every model call vs the oracle at that call's input
  and sigma;
- the mask demonstrably acts: with the wrapper node's enabled=False the output equals the unmasked reference and
  differs from the masked one.

Error measure as in test_parity.py: max|ours - ref| / max|ref - base| <= 1e-4.
"""
from __future__ import annotations


import pytest
import torch

from lyco_testkit.lycoris_files import config_for, make_lycoris
from lyco_testkit.oracle import base_output, reference_output

BOUND = 1e-4
TIMESTEPS = (999, 750, 500, 250, 0)
FAMILIES = ("flux2", "sdxl")




@pytest.fixture(scope="module")
def artifacts(get_twin, tmp_path_factory):
    """family -> (twin, artifact): T-LoRA rank 8, tlora_min_rank 2, tlora_alpha 1.5 (so both parameters act)."""
    d = tmp_path_factory.mktemp("tlora_parity")
    out = {}
    for family in FAMILIES:
        twin = get_twin(family)
        cfg = config_for("tlora", family, tlora_min_rank=2, tlora_alpha=1.5)
        out[family] = (twin, make_lycoris(twin.pristine_diffusers_model(), d / f"{family}.safetensors", cfg,
                                          seed=3, weight_std=0.2))
    return out


def contribution_error(ours: torch.Tensor, ref: torch.Tensor, base: torch.Tensor) -> float:
    effect = float((ref - base).abs().max())
    assert effect > 1e-6, "the adapter has no effect: the test could not fail"
    return float((ours - ref).abs().max()) / effect


def _inputs_at(twin, t: int, seed: int = 0) -> dict:
    if twin.family.startswith("flux"):
        return twin.make_inputs(seed, sigma=t / 1000.0)
    return twin.make_inputs(seed, t=t)


def _loaded(binding, twin, art, strength=1.0):
    patched, report = binding("apply").apply_lycoris(twin.fresh_comfy_patcher(), str(art.path), strength, "auto")
    assert report.unmatched == [] and report.mode == "bypass", report.text()
    return patched


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_at_timesteps(binding, artifacts, family, record_property):
    twin, art = artifacts[family]
    patched = _loaded(binding, twin, art)
    schedule = [r for r in patched.attachments["lycoris"] if r.schedule is not None][0].schedule
    assert (schedule.max_rank, schedule.min_rank, schedule.alpha) == (8, 2, 1.5)
    worst = 0.0
    ranks = []
    for t in TIMESTEPS:
        inputs = _inputs_at(twin, t)
        ref = reference_output(twin, art, 1.0, inputs, tlora_mask="auto")
        base = base_output(twin, inputs)
        ours = twin.run_comfy(patched, inputs)
        err = contribution_error(ours, ref, base)
        ranks.append(int(schedule.buffer("cpu", torch.float32).sum()))
        worst = max(worst, err)
        assert err <= BOUND, f"{family} t={t}: error {err:.2e}"
    # the wrapper derived these ranks from sigma: r(t) = floor(((1000-t)/1000)^1.5·6) + 2
    assert ranks == [2, 2, 4, 5, 8], ranks
    record_property("worst_error", worst)
    print(f"\nT-LoRA parity {family}: t={TIMESTEPS} ranks {ranks} worst {worst:.2e}")


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_acts_disabled_equals_unmasked(binding, pack, artifacts, family):
    """Without the mask (wrapper node enabled=False) our output is LyCORIS's all-ranks output, far from the masked
    one; with it, the masked one."""
    import importlib
    node = importlib.import_module(f"{pack.__name__}.nodes.tlora_node").TLoraSamplerWrapper
    twin, art = artifacts[family]
    patched = _loaded(binding, twin, art)
    off = node.execute(patched, -1, 0.0, False).args[0]
    inputs = _inputs_at(twin, 750, seed=4)
    base = base_output(twin, inputs)
    masked = reference_output(twin, art, 1.0, inputs, tlora_mask="auto")
    unmasked = reference_output(twin, art, 1.0, inputs, tlora_mask=None)
    ours_off = twin.run_comfy(off, inputs)
    ours_on = twin.run_comfy(patched, inputs)
    assert contribution_error(ours_off, unmasked, base) <= BOUND
    assert contribution_error(ours_on, masked, base) <= BOUND
    gap = contribution_error(ours_off, masked, base)
    assert gap > 1e-2, f"disabling the mask changed nothing ({gap:.2e})"
    print(f"\nT-LoRA {family} t=750: mask off vs masked reference {gap:.2e} (bound {BOUND})")


class _Recorder:
    """APPLY_MODEL wrapper (after the T-LoRA one) + diffusion_model forward hook: per model call, the latent x and
    sigma the model received and the raw diffusion_model output."""

    KEY = "test_tlora_recorder"

    def __init__(self):
        self.calls = []

    def wrapper(self, executor, x, t, *args, **kwargs):
        self.calls.append({"x": x.detach().float().clone(), "sigma": t.detach().float().clone()})
        return executor(x, t, *args, **kwargs)

    def hook(self, _module, _args, out):
        self.calls[-1]["raw"] = out.detach().float().clone()


@pytest.mark.parametrize("family", FAMILIES)
def test_real_sampling_loop_per_step(binding, artifacts, family):
    """Four euler steps through comfy.sample.sample (cfg 1): every model call matches the oracle run on the same
    latent at the same sigma, with SimpleTuner's timestep int(t) for that sigma."""
    import comfy.patcher_extension as pe
    import comfy.sample

    twin, art = artifacts[family]
    patched = _loaded(binding, twin, art)
    rec = _Recorder()
    patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, rec.KEY, rec.wrapper)
    template = twin.make_inputs(5)
    positive = twin.comfy_positive(template)
    negative = [[torch.zeros_like(template["context"]), dict(positive[0][1])]]
    latent = torch.zeros_like(template["x"])
    noise = comfy.sample.prepare_noise(latent, 11)
    scheduler = "simple" if family.startswith("flux") else "normal"
    handle = patched.model.diffusion_model.register_forward_hook(rec.hook)
    try:
        comfy.sample.sample(patched, noise, 4, 1.0, "euler", scheduler, positive, negative, latent, seed=11,
                            disable_pbar=True)
    finally:
        handle.remove()
    assert len(rec.calls) == 4
    ms = patched.get_model_object("model_sampling")
    worst, ts = 0.0, []
    for call in rec.calls:
        sigma = call["sigma"].reshape(-1)[:1]
        inputs = dict(template, x=call["x"], sigma=sigma)
        if family.startswith("flux"):
            inputs["timestep"] = sigma.clone()
            inputs["tlora_t"] = float(torch.floor(sigma.float() * 1000))  # diffusers: fp32 sigmas·1000, then int
        else:
            t = ms.timestep(sigma).long()
            inputs["timestep"] = t
            inputs["tlora_t"] = int(t)
        ts.append(inputs["tlora_t"])
        ref = reference_output(twin, art, 1.0, inputs, tlora_mask="auto")
        base = base_output(twin, inputs)
        err = contribution_error(call["raw"], ref, base)
        worst = max(worst, err)
        assert err <= BOUND, f"{family} sigma={float(sigma):.4f}: error {err:.2e}"
    assert len(set(ts)) == 4 and max(ts) >= 900
    print(f"\nT-LoRA sampling loop {family}: timesteps {ts} worst {worst:.2e}")
