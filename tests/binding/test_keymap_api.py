# SPDX-License-Identifier: GPL-3.0-or-later
"""The key-map API contract: spellings, unknown names, file-key splitting, caching, the patch-key form that
``ModelPatcher.add_patches`` accepts, ComfyUI's own names kept, guess_family, and that the value checker in
test_keymap_zoo really catches a wrong slice."""
from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
zoo = pytest.importorskip("test_keymap_zoo")  # skips (with its reason) where ComfyUI / diffusers are missing
torch = zoo.torch
KM = zoo.KM


@pytest.fixture(scope="module")
def flux2():
    return zoo.twin("flux2")


def test_public_api_has_docstrings():
    for name in ("build_key_map", "family_of", "guess_family", "candidate_families", "family_table",
                 "normalize_name", "Target", "KeyMap"):
        assert inspect.getdoc(getattr(KM, name)), name
    assert [f.name for f in dataclasses.fields(KM.Target)][:3] == ["key", "offset", "function"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        KM.Target("k").key = "x"


def test_spellings_resolve_to_the_same_target(flux2):
    km = KM.build_key_map(flux2.comfy_patcher)
    names = ["lycoris_transformer_blocks_0_attn_to_q", "transformer.transformer_blocks.0.attn.to_q",
             "transformer_blocks.0.attn.to_q", "lora_unet_transformer_blocks_0_attn_to_q",
             "lora_transformer_transformer_blocks_0_attn_to_q", "base_model.model.transformer_blocks.0.attn.to_q"]
    targets = {n: km.get(n) for n in names}
    assert all(t is not None for t in targets.values()), targets
    assert len(set(targets.values())) == 1
    t = targets[names[0]]
    assert t.key == "diffusion_model.double_blocks.0.img_attn.qkv.weight" and t.offset == (0, 0, 32)
    # ComfyUI's own paths, in the spellings other trainers use
    whole = km.get("diffusion_model.double_blocks.0.img_attn.qkv")
    assert whole == km.get("lora_unet_double_blocks_0_img_attn_qkv") == km.get("double_blocks.0.img_attn.qkv")
    assert whole.key == t.key and whole.offset is None
    # lenient lookups: any known prefix in front of a known path
    assert km.get("model.diffusion_model.double_blocks.0.img_attn.qkv") == whole
    assert km["transformer.transformer.transformer_blocks.0.attn.to_q"] == t
    assert "unet.transformer_blocks.0.attn.to_q" in km
    # Flux 2's single-block to_out is a plain Linear (no ".0"), diffusers' double-block one is to_out.0
    assert km.get("model.diffusion_model.single_transformer_blocks.0.attn.to_out").key.endswith("linear2.weight")
    assert km.get("unet.transformer_blocks.0.attn.processor.to_out").key.endswith("img_attn.proj.weight")


def test_norm_and_swapped_targets(flux2):
    import comfy.utils

    km = KM.build_key_map(flux2.comfy_patcher)
    n = km.get("lycoris_transformer_blocks_1_attn_norm_added_k")
    assert n.key == "diffusion_model.double_blocks.1.txt_attn.norm.key_norm.scale"
    o = km.get("lycoris_norm_out_linear")
    assert o.key == "diffusion_model.final_layer.adaLN_modulation.1.weight"
    assert o.function is comfy.utils.swap_scale_shift and o.offset is None


def test_unknown_names_are_not_resolved(flux2):
    km = KM.build_key_map(flux2.comfy_patcher)
    for name in ("lycoris_transformer_blocks_99_attn_to_q", "lycoris_transformer_blocks_0_attn_to_z",
                 "lycoris_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",  # an SDXL name
                 "lycoris_single_transformer_blocks_0_proj_mlp",  # a Flux.1 name on Flux 2
                 "lycoris_", "", "transformer.", "lycoris_transformer_blocks_0_attn"):
        assert km.get(name) is None, name
        assert name not in km
    with pytest.raises(KeyError):
        km["lycoris_nope"]


def test_split_and_resolve_file_keys(flux2):
    km = KM.build_key_map(flux2.comfy_patcher)
    assert km.split("lycoris_transformer_blocks_0_ff_linear_in.lokr_w1") == (
        "lycoris_transformer_blocks_0_ff_linear_in", "lokr_w1")
    assert km.split("transformer.single_transformer_blocks.1.attn.to_out.lora_A.weight") == (
        "transformer.single_transformer_blocks.1.attn.to_out", "lora_A.weight")
    t, param = km.resolve("lycoris_single_transformer_blocks_1_attn_to_qkv_mlp_proj.alpha")
    assert param == "alpha" and t.key == "diffusion_model.single_blocks.1.linear1.weight"
    assert km.split("lycoris_nope.alpha") is None and km.resolve("lycoris_nope.alpha") is None


def test_cached_per_model_and_shared_by_clones(flux2):
    p = flux2.comfy_patcher
    km = KM.build_key_map(p)
    assert KM.build_key_map(p.clone()) is km
    assert KM.build_key_map(p.model) is km
    other = zoo.build_flux2(seed=1).comfy_patcher
    assert KM.build_key_map(other) is not km


def test_targets_work_as_add_patches_keys(flux2):
    """Target.as_patch_key() is what ModelPatcher.add_patches takes, slices and functions included."""
    p = flux2.comfy_patcher.clone()
    km = KM.build_key_map(p)
    names = ["lycoris_transformer_blocks_0_attn_to_k", "lycoris_norm_out_linear",
             "lycoris_single_transformer_blocks_0_attn_to_qkv_mlp_proj"]
    sd = p.model.state_dict()
    patches = {}
    for n in names:
        t = km[n]
        w = sd[t.key] if t.offset is None else sd[t.key].narrow(*t.offset)
        patches[t.as_patch_key()] = ("diff", (torch.ones_like(w),))
    accepted = p.add_patches(patches, 1.0)
    assert len(accepted) == len(names)
    # the patched slice, and only it, moves
    import comfy.lora

    t = km["lycoris_transformer_blocks_0_attn_to_k"]
    w0 = sd[t.key].clone()
    w1 = comfy.lora.calculate_weight(p.patches[t.key], w0.clone(), t.key)
    dim, start, length = t.offset
    assert torch.equal(w1.narrow(dim, start, length), w0.narrow(dim, start, length) + 1)
    assert torch.equal(w1.narrow(dim, 0, start), w0.narrow(dim, 0, start))
    assert torch.equal(w1.narrow(dim, start + length, w0.shape[0] - start - length),
                       w0.narrow(dim, start + length, w0.shape[0] - start - length))


@pytest.mark.parametrize("family", list(zoo.BUILDERS))
def test_comfyui_own_names_are_kept(family):
    """Nothing stock ComfyUI 0.3.75 accepts (and that exists in the model) is lost, except the entries the family
    table rejects as wrong (Flux.1 names on Flux 2, Lumina 2's grouped-query qkv sliced in thirds)."""
    import re

    import comfy.lora

    p = zoo.twin(family).comfy_patcher
    km = KM.build_key_map(p)
    sd = p.model.state_dict()
    reject = KM.family_table(family).comfy_reject
    for name, t in comfy.lora.model_lora_keys_unet(p.model, {}).items():
        key = t if isinstance(t, str) else t[0]
        if key not in sd or name == key:
            continue
        if reject and re.search("|".join(reject), name):
            assert dict.get(km, name) is None, (family, name)
            continue
        assert km.get(name) is not None, (family, name)
        assert km[name].key == key, (family, name)


def test_checker_catches_a_wrong_slice(flux2, monkeypatch):
    """Sanity of the value test itself: swap the to_q and to_k slices, the zoo check must fail."""
    km = KM.build_key_map(flux2.comfy_patcher)
    bad = KM.KeyMap(km, family=km.family, canonical=km.canonical)
    q, k = km["lycoris_transformer_blocks_0_attn_to_q"], km["lycoris_transformer_blocks_0_attn_to_k"]
    bad["lycoris_transformer_blocks_0_attn_to_q"], bad["lycoris_transformer_blocks_0_attn_to_k"] = k, q
    monkeypatch.setattr(KM, "build_key_map", lambda _p: bad)
    ok, total, problems = zoo.check_twin(flux2)
    assert len(problems) == 2 and all("values differ" in s for s in problems), problems


@pytest.mark.parametrize("family", ["flux2", "flux1"])
def test_fused_qkv_spellings(family):
    """diffusers' fuse_qkv_projections names (to_qkv / to_added_qkv; SimpleTuner #3222) land on the whole fused
    ComfyUI qkv (Flux.1 single blocks: the first 3h rows of linear1) with equal values."""
    import copy

    tw = zoo.twin(family)
    d = copy.deepcopy(tw.diffusers_model)
    d.fuse_qkv_projections()
    fused = {n: m.weight for n, m in d.named_modules() if n.endswith(("attn.to_qkv", "attn.to_added_qkv"))}
    assert fused
    km = KM.build_key_map(tw.comfy_patcher)
    sd = tw.comfy_patcher.model.state_dict()
    for n, w in fused.items():
        t = km.get("lycoris_" + n.replace(".", "_"))
        assert t is not None, n
        cw = sd[t.key] if t.offset is None else sd[t.key].narrow(*t.offset)
        assert torch.equal(cw, w), n


def test_guess_family_basic():
    assert KM.guess_family([]) is None
    assert KM.guess_family(["lycoris_completely_unknown_module"]) is None
    assert KM.guess_family(["lycoris_single_transformer_blocks_3_attn_to_qkv_mlp_proj"]) == "flux2"
    assert KM.guess_family(["lycoris_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k",
                            "lycoris_add_embedding_linear_1"]) == "sdxl"
    assert KM.guess_family(["lycoris_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                            "lycoris_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2"]) == "sd15"
    # comfy-path spellings too
    assert KM.guess_family(["lora_unet_double_blocks_0_img_mod_lin", "lora_unet_single_blocks_0_linear1"]) == "flux1"


@pytest.mark.parametrize("family", list(zoo.BUILDERS))
def test_guess_family_of_every_twin_file(family):
    """All lycoris_ names of a family's twin are recognised as that family (diffusers and ComfyUI spellings)."""
    tw = zoo.twin(family)
    names = ["lycoris_" + p.replace(".", "_") for p in zoo.lycoris_modules(tw.diffusers_model)]
    assert KM.guess_family(names) == family
    sd = tw.comfy_patcher.model.state_dict()
    cnames = ["lora_unet_" + k[len("diffusion_model."):].rsplit(".", 1)[0].replace(".", "_")
              for k in sd if k.startswith("diffusion_model.") and k.endswith(".weight")]
    assert family in KM.candidate_families(cnames)
    assert KM.family_table(family) is not None and KM.family_table(family).name == family


def test_family_of_sd2_shares_the_sd15_table():
    assert KM.family_table("sd2").name == "sd15"
