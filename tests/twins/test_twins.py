# SPDX-License-Identifier: GPL-3.0-or-later
"""The diffusers model and its ComfyUI twin agree with no adapter (fp32, CPU), through ComfyUI's real sampling
stack on one side and the plain diffusers forward on the other."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.binding

FAMILIES = ("flux2", "flux1", "sdxl", "sd15")


@pytest.mark.parametrize("family", FAMILIES)
def test_twin_outputs_agree(get_twin, family):
    from lyco_testkit.twins import max_abs_diff

    twin = get_twin(family)
    for seed in (0, 1):
        inputs = twin.make_inputs(seed)
        ref = twin.run_diffusers(twin.diffusers_model, inputs)
        out = twin.run_comfy(twin.comfy_patcher, inputs)
        assert out.shape == ref.shape == inputs["x"].shape
        diff = max_abs_diff(out, ref)
        scale = float(ref.abs().max())
        print(f"{family} seed {seed}: fp32 max abs diff {diff:.3g} (output max |y| {scale:.3g}, "
              f"sigma {float(inputs['sigma'][0]):.4f})")
        assert scale > 1e-2, "degenerate twin output"
        assert diff <= 1e-4 * scale


@pytest.mark.parametrize("family", FAMILIES)
def test_twin_inputs_are_deterministic_and_distinct(get_twin, family):
    import torch

    twin = get_twin(family)
    a, b, c = twin.make_inputs(3), twin.make_inputs(3), twin.make_inputs(4)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["context"], b["context"])
    assert not torch.equal(a["x"], c["x"])
    if family.startswith("flux"):
        assert float(a["tlora_t"]) == pytest.approx(1000 * float(a["sigma"][0]))
        assert torch.equal(a["timestep"], a["sigma"])
    else:  # σ is ComfyUI's own sigmas[t], so its nearest-index timestep is exactly t
        ms = twin.comfy_patcher.model.model_sampling
        assert int(ms.timestep(a["sigma"])[0]) == int(a["timestep"][0]) == a["tlora_t"]


def test_flux2_context_is_front_padded_to_512(get_twin):
    twin = get_twin("flux2")
    ctx = twin.make_inputs(0)["context"]
    assert ctx.shape[1] == 512
    assert float(ctx[:, :504].abs().max()) == 0.0 and float(ctx[:, 504:].abs().min()) > 0.0


def test_build_comfy_twin_is_deterministic_and_equals_the_twin(get_twin):
    import torch
    from lyco_testkit.twins import build_comfy_twin

    twin = get_twin("flux2")
    p1, p2 = build_comfy_twin("flux2", 0), build_comfy_twin("flux2", 0)
    assert p1 is not p2 and p1.model is not p2.model
    sd0 = twin.comfy_state_dict()
    for p in (p1, p2):
        sd = p.model.diffusion_model.state_dict()
        assert sd.keys() == sd0.keys()
        assert all(torch.equal(sd[k], sd0[k]) for k in sd0)
    other = build_comfy_twin("flux2", 1).model.diffusion_model.state_dict()
    assert not torch.equal(other["img_in.weight"], sd0["img_in.weight"])


def test_flux2_converter_covers_every_weight(get_twin):
    from lyco_testkit import convert

    twin = get_twin("flux2")
    uc = twin.unet_config
    km = convert.flux2_key_map(uc["depth"], uc["depth_single_blocks"], uc["hidden_size"], uc["guidance_embed"])
    dsd = twin.diffusers_model.state_dict()
    assert set(km) == set(dsd)
    targets = {t if isinstance(t, str) else t[0] for t in km.values()}
    assert targets == set(twin.comfy_state_dict())
    # norm_out.linear halves are swapped (diffusers [scale | shift] vs BFL [shift | scale])
    w = dsd["norm_out.linear.weight"]
    c = twin.comfy_state_dict()["final_layer.adaLN_modulation.1.weight"]
    h = w.shape[0] // 2
    assert (c[:h] == w[h:]).all() and (c[h:] == w[:h]).all()


def test_patched_clone_does_not_leak_into_the_twin(get_twin):
    """ComfyUI re-patches the shared model per patcher: a clone's weight patch shows only through the clone."""
    import torch

    from lyco_testkit.twins import max_abs_diff

    twin = get_twin("flux2")
    inputs = twin.make_inputs(0)
    base = twin.run_comfy(twin.comfy_patcher, inputs)
    clone = twin.comfy_patcher.clone()
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    w = twin.comfy_state_dict()["double_blocks.0.img_attn.qkv.weight"]
    clone.add_patches({key: ("diff", (0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)),))})
    assert max_abs_diff(twin.run_comfy(clone, inputs), base) > 1e-3
    assert max_abs_diff(twin.run_comfy(twin.comfy_patcher, inputs), base) == 0.0
    assert max_abs_diff(twin.run_diffusers(twin.diffusers_model, inputs), base) <= 1e-4 * float(base.abs().max())
