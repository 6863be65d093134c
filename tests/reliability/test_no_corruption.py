# SPDX-License-Identifier: GPL-3.0-or-later
"""No corruption of the shared base model: apply, stack, change strength, re-schedule T-LoRA, switch between
clones and unload leave the base weights bit-exact (state hash), and graphs sharing one base model see only
their own adapters (each output equals the same graph built on a fresh, unshared model)."""
from __future__ import annotations

import pytest
import torch

from rel_util import assert_untouched, state_hash

pytestmark = pytest.mark.binding


@pytest.fixture(scope="module")
def files(rel_catalogue_dir):
    return {k: str(rel_catalogue_dir.folder / v) for k, v in rel_catalogue_dir.good.items()}


def _runner(patcher):
    from lyco_testkit import twins

    tw = twins.Twin(family="flux2", seed=0, diffusers_model=None, comfy_patcher=patcher, diffusers_config={},
                    unet_config=twins.unet_config_for("flux2"))
    inputs = tw.make_inputs(0)
    return lambda p: tw.run_comfy(p, inputs)


def _unload_all():
    import comfy.model_management as mm

    mm.unload_all_models()


def test_apply_stack_strength_switch_unload_keep_base_bit_exact(files, pack_mod, flux2_patcher):
    apply = pack_mod("lycoris_comfy.apply").apply_lycoris
    set_strength = pack_mod("lycoris_comfy.strength").set_strength
    configure_tlora = pack_mod("lycoris_comfy.tlora_config").configure_tlora
    base = flux2_patcher
    before = state_hash(base)
    run = _runner(base)
    out = {"base": run(base)}

    merged, _ = apply(base, files["locon"], 0.7, "merged")
    stacked, _ = apply(merged, files["lokr"], -0.5, "bypass")
    stronger = set_strength(stacked, 1.3)
    tl, _ = apply(stronger, files["tlora"], 0.9, "auto")
    tl2, _ = configure_tlora(tl, 2, 2.0, True)
    chain = {"merged": merged, "stacked": stacked, "stronger": stronger, "tlora": tl, "tlora2": tl2}
    for name, p in chain.items():
        out[name] = run(p)
    for a, b in zip(["base"] + list(chain), list(chain)):
        assert not torch.equal(out[a], out[b]), f"{b} had no effect"
    _unload_all()
    assert_untouched(base, before)
    # switch back and forth between the clones, in another order: every output is what it was
    for name in ["tlora", "merged", "base", "stacked", "tlora2"]:
        got = run(chain.get(name, base))
        assert torch.equal(got, out[name]), f"{name}: output changed after switching clones"
    _unload_all()
    assert_untouched(base, before)
    loads = {name: len(p.attachments["lycoris"]) for name, p in chain.items()}
    assert loads == {"merged": 1, "stacked": 2, "stronger": 2, "tlora": 3, "tlora2": 3}, loads


def test_graphs_sharing_one_base_see_only_their_own_adapters(files, pack_mod, flux2_patcher):
    from lyco_testkit import twins

    apply = pack_mod("lycoris_comfy.apply").apply_lycoris
    shared = flux2_patcher
    before = state_hash(shared)
    run = _runner(shared)
    graphs = {"a": (files["locon"], 0.8, "merged"), "b": (files["lokr"], 1.0, "bypass"),
              "c": (files["tlora"], 1.0, "bypass"), "d": (files["loha"], -0.6, "merged")}
    # references: each graph on its own fresh model, nothing shared
    refs = {"base": run(twins.build_comfy_twin("flux2", 0))}
    for g, (path, strength, mode) in graphs.items():
        refs[g] = run(apply(twins.build_comfy_twin("flux2", 0), path, strength, mode)[0])
    _unload_all()
    clones = {g: apply(shared, *args)[0] for g, args in graphs.items()}
    clones["base"] = shared
    for g in ["a", "b", "c", "a", "base", "d"]:
        assert torch.equal(run(clones[g]), refs[g]), f"graph {g} saw another graph's adapters"
    _unload_all()
    assert_untouched(shared, before)
