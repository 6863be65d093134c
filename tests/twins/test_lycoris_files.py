# SPDX-License-Identifier: GPL-3.0-or-later
"""The LyCORIS file maker (SimpleTuner's recipe) and the SimpleTuner-validation oracle."""
from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.binding

FAMILIES = ("flux2", "flux1", "sdxl", "sd15")


def _is_flag_or_raw_constraint(key: str, tensor) -> bool:
    """Tensors that are legitimately zero: IA3's ``on_input`` flag (0 = output side) and OFT/BOFT ``alpha``, which
    stores the raw ``constraint`` (0 = unconstrained) (lycoris-format §3.2)."""
    return key.endswith(".on_input") or (key.endswith(".alpha") and tensor.ndim == 0)


def _check_file(art, expect_nonzero_alpha: bool = True):
    from lyco_testkit.lycoris_files import read_lycoris_file

    sd, meta = read_lycoris_file(art.path)
    assert set(sd) == art.state_dict_keys()
    assert json.loads(meta["lycoris_config"]) == art.config
    zero = [k for k, v in sd.items() if not bool((v != 0).any())]
    algo = art.config.get("algo")
    allowed = [k for k in zero if _is_flag_or_raw_constraint(k, sd[k]) and algo in ("ia3", "diag-oft", "boft")]
    assert sorted(zero) == sorted(allowed), f"all-zero tensors: {zero[:6]}"
    assert {k.split(".")[0] for k in sd} == set(art.module_names)
    assert all(v.dtype == art.dtype for v in sd.values())
    return sd, meta


@pytest.mark.parametrize("family", FAMILIES)
def test_family_file_and_oracle(get_twin, family, tmp_path):
    from lyco_testkit import lycoris_files as lf
    from lyco_testkit import oracle
    from lyco_testkit.twins import max_abs_diff

    twin = get_twin(family)
    inputs = twin.make_inputs(0)
    base = oracle.base_output(twin, inputs)
    # the family's SimpleTuner-like config
    art = lf.make_lycoris(twin.diffusers_model, tmp_path / f"{family}.safetensors", lf.family_config(family),
                          family=family)
    _check_file(art)
    print(f"{family}: {len(art.module_names)} modules, e.g. {art.module_names[0]} "
          f"(diffusers {art.module_paths[art.module_names[0]]})")
    r1 = oracle.reference_output(twin, art, 1.0, inputs)
    assert max_abs_diff(r1, base) > 1e-4 * float(base.abs().max())
    # LoCon: multiplier 0 is exactly the base, 1 is not
    loc = lf.make_lycoris(twin.diffusers_model, tmp_path / f"{family}_locon.safetensors",
                          lf.config_for("locon", family), family=family)
    _check_file(loc)
    assert max_abs_diff(oracle.reference_output(twin, loc, 0.0, inputs), base) == 0.0
    assert max_abs_diff(oracle.reference_output(twin, loc, 1.0, inputs), base) > 1e-4 * float(base.abs().max())
    # the twin's own model is untouched by the maker (it adapts a deep copy)
    assert max_abs_diff(twin.run_diffusers(twin.diffusers_model, inputs), base) == 0.0


def test_flux2_lokr_preset_keys_mirror_simpletuner(get_twin, tmp_path):
    """lycoris-format §5.2: 12 modules per double block, 2 per single block, each alpha + full lokr_w1/lokr_w2,
    factors 2 (attention) / 4 (feed-forward) / 2 (parallel self-attention), bypass mode."""
    from lyco_testkit import lycoris_files as lf

    twin = get_twin("flux2")
    art = lf.make_lycoris(twin.diffusers_model, tmp_path / "klein.safetensors", lf.FLUX2_LOKR_CONFIG,
                          family="flux2")
    sd, _ = _check_file(art)
    uc = twin.unet_config
    double = ["attn_to_q", "attn_to_k", "attn_to_v", "attn_to_out_0", "attn_add_q_proj", "attn_add_k_proj",
              "attn_add_v_proj", "attn_to_add_out", "ff_linear_in", "ff_linear_out", "ff_context_linear_in",
              "ff_context_linear_out"]
    single = ["attn_to_qkv_mlp_proj", "attn_to_out"]
    expected = {f"lycoris_transformer_blocks_{i}_{n}" for i in range(uc["depth"]) for n in double}
    expected |= {f"lycoris_single_transformer_blocks_{j}_{n}" for j in range(uc["depth_single_blocks"])
                 for n in single}
    assert set(art.module_names) == expected
    assert set(sd) == {f"{m}.{p}" for m in expected for p in ("alpha", "lokr_w1", "lokr_w2")}
    assert art.bypass is True
    h = uc["hidden_size"]
    mlp = int(h * uc["mlp_ratio"])
    for m in expected:
        w1, w2 = sd[f"{m}.lokr_w1"], sd[f"{m}.lokr_w2"]
        factor = 4 if "_ff_" in m else 2
        assert w1.shape == (factor, factor), m
        path = art.module_paths[m]
        lin = art.model.get_submodule(path)
        assert (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]) == tuple(lin.weight.shape), m
        assert float(sd[f"{m}.alpha"]) == 10000.0  # forced to r (full w1 and w2): s = 1
    assert tuple(art.model.get_submodule("single_transformer_blocks.0.attn.to_qkv_mlp_proj").weight.shape) == \
        (3 * h + 2 * mlp, h)


@pytest.mark.parametrize("algo", ["locon", "loha", "lokr", "dora", "glora", "ia3", "full", "diag-oft", "boft",
                                  "tlora"])
def test_config_for_every_algo_on_flux2(get_twin, algo, tmp_path):
    from lyco_testkit import lycoris_files as lf
    from lyco_testkit import oracle
    from lyco_testkit.twins import max_abs_diff

    twin = get_twin("flux2")
    cfg = lf.config_for(algo, "flux2")
    assert cfg["linear_alpha"] / cfg["linear_dim"] != 1.0
    art = lf.make_lycoris(twin.diffusers_model, tmp_path / f"{algo}.safetensors", cfg, family="flux2")
    _check_file(art)
    assert len(art.module_names) == 28
    inputs = twin.make_inputs(1)
    base = oracle.base_output(twin, inputs)
    r1 = oracle.reference_output(twin, art, 1.0, inputs, tlora_mask="auto" if algo == "tlora" else None)
    assert max_abs_diff(r1, base) > 1e-4 * float(base.abs().max())
    r0 = oracle.reference_output(twin, art, 0.0, inputs)
    if algo == "dora":  # rebuild-mode DoRA: m = 0 still gives W + ΔW renormalised (lycoris-format §2.2)
        assert max_abs_diff(r0, base) > 1e-4 * float(base.abs().max())
    else:
        assert max_abs_diff(r0, base) <= 1e-6 * float(base.abs().max())


def test_config_for_variants():
    from lyco_testkit import lycoris_files as lf

    assert lf.config_for("lokr", "sdxl", full_matrix=True)["full_matrix"] is True
    assert lf.config_for("lokr", "sdxl", decompose_both=True, factor=8)["factor"] == 8
    d = lf.config_for("dora", "sd15", wd_on_output=False)
    assert d["algo"] == "locon" and d["dora_wd"] is True and d["wd_on_output"] is False
    o = lf.config_for("diag-oft", "flux1", constraint=1e-3, rescaled=True)
    assert o["constraint"] == 1e-3 and o["rescaled"] is True
    t = lf.config_for("tlora", "flux2", tlora_min_rank=2, tlora_alpha=2.0)
    assert (t["tlora_min_rank"], t["tlora_alpha"]) == (2, 2.0)
    assert "apply_preset" not in lf.config_for("locon", "flux2", apply_preset=None)
    with pytest.raises(ValueError):
        lf.config_for("nope", "flux2")


def test_presets_do_not_leak_between_files(get_twin, tmp_path):
    from lycoris.wrapper import LycorisNetwork

    from lyco_testkit import lycoris_files as lf

    twin = get_twin("flux2")
    before = {k: getattr(LycorisNetwork, k) for k in lf.PRESET_CLASS_DEFAULTS}
    lf.make_lycoris(twin.diffusers_model, tmp_path / "a.safetensors", lf.FLUX2_LOKR_CONFIG)
    assert {k: getattr(LycorisNetwork, k) for k in lf.PRESET_CLASS_DEFAULTS} == before
    # no apply_preset: LyCORIS's defaults (every Linear), not the previous file's Flux2 classes
    art = lf.make_lycoris(twin.diffusers_model, tmp_path / "b.safetensors",
                          lf.config_for("locon", "flux2", apply_preset=None))
    assert "lycoris_x_embedder" in art.module_names
    assert "lycoris_double_stream_modulation_img_linear" in art.module_names
    # even when a foreign preset is left in the class state
    LycorisNetwork.apply_preset({"target_module": ["Flux2FeedForward"]})
    try:
        art2 = lf.make_lycoris(twin.diffusers_model, tmp_path / "c.safetensors",
                               lf.config_for("locon", "flux2", apply_preset=None))
    finally:
        for k, v in before.items():
            setattr(LycorisNetwork, k, v)
    assert art2.module_names == art.module_names


def test_tlora_mask_and_schedule(get_twin, tmp_path):
    import torch
    from lycoris.modules.tlora import get_timestep_mask

    from lyco_testkit import lycoris_files as lf
    from lyco_testkit import oracle
    from lyco_testkit.twins import max_abs_diff

    twin = get_twin("flux2")
    art = lf.make_lycoris(twin.diffusers_model, tmp_path / "t.safetensors",
                          lf.config_for("tlora", "flux2", tlora_min_rank=1, tlora_alpha=1.0), family="flux2")
    assert art.tlora == {"max_rank": 8, "min_rank": 1, "alpha": 1.0}
    inputs = twin.make_inputs(0, sigma=0.7595)  # t = 759 -> r_active = int(0.241·7) + 1 = 2
    mask = oracle.tlora_mask_for(art, inputs)
    assert mask.tolist() == [[1.0, 1.0, 0, 0, 0, 0, 0, 0]]
    full = oracle.reference_output(twin, art, 1.0, inputs)
    masked = oracle.reference_output(twin, art, 1.0, inputs, tlora_mask="auto")
    explicit = oracle.reference_output(twin, art, 1.0, inputs, tlora_mask=mask)
    assert get_timestep_mask() is None
    assert max_abs_diff(masked, explicit) == 0.0
    assert max_abs_diff(masked, full) > 1e-4 * float(full.abs().max())
    # all-ones mask == no mask
    ones = oracle.reference_output(twin, art, 1.0, inputs, tlora_mask=torch.ones(1, 8))
    assert max_abs_diff(ones, full) == 0.0


def test_bf16_file_matches_live_network_and_final_save(get_twin, tmp_path):
    import torch

    from lyco_testkit import lycoris_files as lf

    twin = get_twin("sd15")
    art = lf.make_lycoris(twin.diffusers_model, tmp_path / "bf16.safetensors", lf.config_for("loha", "sd15"),
                          dtype=torch.bfloat16, final_save=True)
    sd, meta = lf.read_lycoris_file(art.path)
    live = art.network.state_dict()
    assert set(sd) == set(live)
    for k, v in sd.items():
        assert v.dtype == torch.bfloat16
        assert torch.equal(v.float(), live[k].float()), k
    cfg = json.loads(meta["lycoris_config"])
    assert not {"multiplier", "linear_dim", "linear_alpha", "tlora_min_rank", "tlora_alpha"} & set(cfg)
    assert cfg["algo"] == "loha"


def test_module_names_are_lycoris_paths(get_twin, tmp_path):
    from lyco_testkit import lycoris_files as lf

    twin = get_twin("sdxl")
    art = lf.make_lycoris(twin.diffusers_model, tmp_path / "x.safetensors", lf.SDXL_ATTN_CONFIG, family="sdxl")
    assert art.module_names and all(re.fullmatch(r"lycoris_[A-Za-z0-9_]+", n) for n in art.module_names)
    for n, p in art.module_paths.items():
        assert p is not None and "lycoris_" + p.replace(".", "_") == n
        assert ".attn1." in p or ".attn2." in p


def test_make_demo_lycoris_is_deterministic(get_twin, tmp_path):
    import torch

    from lyco_testkit import lycoris_files as lf

    a = lf.make_demo_lycoris("flux2", "lokr", tmp_path / "a.safetensors")
    b = lf.make_demo_lycoris("flux2", "lokr", tmp_path / "b.safetensors")
    sa, _ = lf.read_lycoris_file(a.path)
    sb, _ = lf.read_lycoris_file(b.path)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_simpletuner_quirks_pinned(get_twin, tmp_path):
    """Two SimpleTuner + lycoris-lora 4.1.3 behaviours a loader must expect (found while building these tools):

    - ``apply_preset.enable_conv: false`` has no effect: create_lycoris calls ``apply_preset(PRESET["full"])``
      itself, AFTER SimpleTuner's apply_preset, and that sets ENABLE_CONV back to True, so 3x3 convs are adapted;
    - the documented Flux LoKr targets ``["Attention", "FeedForward"]`` match only the double blocks'
      FeedForwards on diffusers 0.42 Flux.1 (its attention class is ``FluxAttention``; single blocks have no
      FeedForward)."""
    from lyco_testkit import lycoris_files as lf

    sd15 = get_twin("sd15")
    art = lf.make_lycoris(sd15.diffusers_model, tmp_path / "conv.safetensors",
                          lf.config_for("locon", "sd15",
                                        apply_preset={"target_module": ["ResnetBlock2D"], "enable_conv": False}))
    assert "lycoris_down_blocks_0_resnets_0_conv1" in art.module_names
    flux1 = get_twin("flux1")
    doc = {"algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, "linear_alpha": 1, "factor": 16,
           "apply_preset": {"target_module": ["Attention", "FeedForward"],
                            "module_algo_map": {"Attention": {"factor": 16}, "FeedForward": {"factor": 8}}}}
    art = lf.make_lycoris(flux1.diffusers_model, tmp_path / "doc.safetensors", doc)
    depth = flux1.unet_config["depth"]
    assert set(art.module_names) == {f"lycoris_transformer_blocks_{i}_{n}" for i in range(depth)
                                     for n in ("ff_net_0_proj", "ff_net_2", "ff_context_net_0_proj",
                                               "ff_context_net_2")}
