# SPDX-License-Identifier: GPL-3.0-or-later
"""Key maps on the shared twins (lyco_testkit.twins: flux2 / flux1 / sdxl / sd15, same weights on both sides) and on
SimpleTuner-like LyCORIS files made from them (lyco_testkit.lycoris_files).

- every Linear/Conv/norm module of the diffusers twin, as ``lycoris_<path>``, resolves to a target whose weight
  (narrowed by the offset, through the patch function) EQUALS the diffusers module's weight;
- SimpleTuner's Flux 2 Klein LoKr (lycoris-format.md §5.2: 12 modules per double block, 2 per single block)
  resolves 100 %, each module to the documented ComfyUI target (§4.4 / comfyui-host.md §4.4);
- every module of each family's SimpleTuner-like file resolves, and guess_family names the family.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
zoo = pytest.importorskip("test_keymap_zoo")  # skips (with its reason) where ComfyUI / diffusers are missing
twins = pytest.importorskip("lyco_testkit.twins")
lycoris_files = pytest.importorskip("lyco_testkit.lycoris_files")

KM = zoo.KM
FAMILIES = ("flux2", "flux1", "sdxl", "sd15")
_CACHE = {}


def shared_twin(family):
    if family not in _CACHE:
        _CACHE[family] = twins.build_twin(family, seed=0)
    return _CACHE[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_twin_every_module_equal(family):
    tw = shared_twin(family)
    ok, total, problems = zoo.check_twin(zoo.Twin(family, tw.diffusers_model, tw.comfy_patcher, exact=True))
    assert not problems, f"{family}: {ok}/{total}:\n" + "\n".join(problems[:20])
    assert KM.family_of(tw.comfy_patcher) == family


# lycoris-format.md §5.2, verbatim module suffixes
KLEIN_DOUBLE = ("attn_to_q", "attn_to_k", "attn_to_v", "attn_to_out_0", "attn_add_q_proj", "attn_add_k_proj",
                "attn_add_v_proj", "attn_to_add_out", "ff_linear_in", "ff_linear_out", "ff_context_linear_in",
                "ff_context_linear_out")
KLEIN_SINGLE = ("attn_to_qkv_mlp_proj", "attn_to_out")


def klein_lokr_names(n_double, n_single):
    return ([f"lycoris_transformer_blocks_{i}_{s}" for i in range(n_double) for s in KLEIN_DOUBLE]
            + [f"lycoris_single_transformer_blocks_{j}_{s}" for j in range(n_single) for s in KLEIN_SINGLE])


def test_flux2_klein_lokr_documented_key_set_resolves_to_documented_targets():
    tw = shared_twin("flux2")
    uc = tw.unet_config
    h, nd, ns = uc["hidden_size"], uc["depth"], uc["depth_single_blocks"]
    km = KM.build_key_map(tw.comfy_patcher)
    names = klein_lokr_names(nd, ns)
    assert len(names) == 12 * nd + 2 * ns
    missing = [n for n in names if km.get(n) is None]
    assert not missing, missing
    p = "diffusion_model."
    expect = {
        "attn_to_q": ("img_attn.qkv", (0, 0, h)), "attn_to_k": ("img_attn.qkv", (0, h, h)),
        "attn_to_v": ("img_attn.qkv", (0, 2 * h, h)), "attn_to_out_0": ("img_attn.proj", None),
        "attn_add_q_proj": ("txt_attn.qkv", (0, 0, h)), "attn_add_k_proj": ("txt_attn.qkv", (0, h, h)),
        "attn_add_v_proj": ("txt_attn.qkv", (0, 2 * h, h)), "attn_to_add_out": ("txt_attn.proj", None),
        "ff_linear_in": ("img_mlp.0", None), "ff_linear_out": ("img_mlp.2", None),
        "ff_context_linear_in": ("txt_mlp.0", None), "ff_context_linear_out": ("txt_mlp.2", None),
    }
    for i in range(nd):
        for s, (mod, off) in expect.items():
            t = km[f"lycoris_transformer_blocks_{i}_{s}"]
            assert (t.key, t.offset, t.function) == (f"{p}double_blocks.{i}.{mod}.weight", off, None), s
    for j in range(ns):
        t = km[f"lycoris_single_transformer_blocks_{j}_attn_to_qkv_mlp_proj"]
        assert (t.key, t.offset) == (f"{p}single_blocks.{j}.linear1.weight", None)
        t = km[f"lycoris_single_transformer_blocks_{j}_attn_to_out"]
        assert (t.key, t.offset) == (f"{p}single_blocks.{j}.linear2.weight", None)
    assert KM.guess_family(names) == "flux2"


def test_flux2_stock_comfyui_drops_what_we_map():
    """ComfyUI 0.3.75's own map loses the FF / single-block / modulation modules (comfyui-host.md §4.3)."""
    import comfy.lora

    tw = shared_twin("flux2")
    stock = comfy.lora.model_lora_keys_unet(tw.comfy_patcher.model, {})
    sd = tw.comfy_patcher.model.state_dict()

    def stock_ok(name):
        t = stock.get(name)
        return t is not None and (t if isinstance(t, str) else t[0]) in sd

    names = ["lycoris_" + p.replace(".", "_") for p in zoo.lycoris_modules(tw.diffusers_model)]
    km = KM.build_key_map(tw.comfy_patcher)
    assert all(km.get(n) is not None for n in names)
    dropped = [n for n in names if not stock_ok(n)]
    assert "lycoris_transformer_blocks_0_ff_linear_in" in dropped
    assert "lycoris_single_transformer_blocks_0_attn_to_qkv_mlp_proj" in dropped


@pytest.mark.parametrize("family", FAMILIES)
def test_simpletuner_like_file_resolves_and_is_recognised(family, tmp_path):
    tw = shared_twin(family)
    art = lycoris_files.make_lycoris(tw.diffusers_model, tmp_path / "f.safetensors",
                                     lycoris_files.family_config(family), family=family)
    tensors, _ = lycoris_files.read_lycoris_file(art.path)
    names = sorted({k.split(".", 1)[0] for k in tensors})
    assert names and set(names) == set(art.module_names)
    km = KM.build_key_map(tw.comfy_patcher)
    sd = tw.comfy_patcher.model.state_dict()
    dmods = zoo.lycoris_modules(tw.diffusers_model)
    for n in names:
        t = km.get(n)
        assert t is not None, n
        w = sd[t.key] if t.offset is None else sd[t.key].narrow(*t.offset)
        if t.function is not None:
            w = t.function(w)
        path = art.module_paths[n]
        assert tuple(w.shape) == tuple(dmods[path].shape), n
    if family == "flux2":
        nd, ns = tw.unet_config["depth"], tw.unet_config["depth_single_blocks"]
        assert set(names) == set(klein_lokr_names(nd, ns))  # the real LyCORIS key set is the documented one
    assert KM.guess_family(names) == family
    assert family in KM.candidate_families(names)
