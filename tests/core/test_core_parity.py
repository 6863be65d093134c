# SPDX-License-Identifier: GPL-3.0-or-later
"""Every algorithm and variant against lycoris-lora 4.1.3's live rebuild forward (SimpleTuner validation), fp32,
multipliers 1.0 / 0.5 / -0.7, alpha != rank so s != 1: merged, bypass (float and 0-d tensor multiplier) and
merged-vs-bypass all within max|Δ| / max|adapter effect| <= 1e-4.

The reference is the non-bypass forward of the network lycoris-lora built itself (`create_lycoris`, `apply_to`),
so 4.1.3's *loader* bugs (IA3, DoRA on the input axis, unbalanced LoKr; reference §2.3/§6.1.8) and its *bypass*
quirks (DoRA dropped, bias rotated by OFT/BOFT/IA3; §6.1.3-4) do not enter: our tensors are read natively.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from core_parity import WORST, no_host, ours_merged, run_parity, save_and_parse, build_network, lycoris_names, make_inputs, \
    ratio, spec_for


class Tiny(nn.Module):
    """Linear + several conv geometries, with biases."""

    def __init__(self, grouped: bool = False):
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(12, 16)
        self.conv = nn.Conv2d(8, 12, 3, padding=1)
        self.conv_sd = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2)
        self.conv1 = nn.Conv2d(8, 12, 1)
        self.conv1d = nn.Conv1d(6, 8, 3, padding=1)
        if grouped:
            self.conv_g = nn.Conv2d(8, 12, 3, padding=1, groups=2)


class KronModel(nn.Module):
    """Factorizable sizes for LoKr: linear 64 -> 48, conv 64 -> 64 (3x3)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.lin = nn.Linear(64, 48)
        self.conv = nn.Conv2d(64, 64, 3, padding=1)


class OFTModel(nn.Module):
    """Power-of-two output sizes for Diag-OFT / BOFT."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.lin = nn.Linear(12, 16)
        self.conv = nn.Conv2d(6, 16, 3, padding=1)


class NormModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.lin = nn.Linear(12, 16)
        self.ln = nn.LayerNorm(16)
        self.gn = nn.GroupNorm(4, 12)


class IA3Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.lin = nn.Linear(12, 16)
        self.lin_in = nn.Linear(12, 16)
        self.conv = nn.Conv2d(8, 12, 3, padding=1)
        self.conv_in = nn.Conv2d(8, 12, 3, padding=1)


class TLoRAModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.lin = nn.Linear(12, 16)
        self.lin_small = nn.Linear(5, 16)  # rank 8 > min(out, in): zero-padded SVD base
        self.conv1 = nn.Conv2d(8, 12, 1)


CASES = [
    # id, model, algo, dim, alpha, kwargs
    ("locon", lambda: Tiny(grouped=True), "locon", 8, 4, {}),
    ("locon-tucker", Tiny, "locon", 4, 2, {"use_tucker": True}),
    ("locon-dora-out", lambda: Tiny(grouped=True), "locon", 8, 4, {"dora_wd": True, "wd_on_output": True}),
    ("locon-dora-in", lambda: Tiny(grouped=True), "locon", 8, 4, {"dora_wd": True, "wd_on_output": False}),
    ("loha", lambda: Tiny(grouped=True), "loha", 8, 4, {}),
    ("loha-tucker", Tiny, "loha", 4, 2, {"use_tucker": True}),
    ("loha-dora-out", Tiny, "loha", 8, 4, {"dora_wd": True, "wd_on_output": True}),
    ("loha-dora-in", Tiny, "loha", 8, 4, {"dora_wd": True, "wd_on_output": False}),
    ("lokr-factor-1", KronModel, "lokr", 2, 1, {"factor": -1}),
    ("lokr-factor4", KronModel, "lokr", 2, 1, {"factor": 4}),
    ("lokr-full-matrix", KronModel, "lokr", 8, 4, {"factor": 4, "full_matrix": True}),
    ("lokr-decompose-both", KronModel, "lokr", 2, 1, {"factor": 8, "decompose_both": True}),
    ("lokr-tucker", KronModel, "lokr", 4, 2, {"factor": 4, "use_tucker": True}),
    ("lokr-unbalanced", KronModel, "lokr", 2, 1, {"factor": 4, "unbalanced_factorization": True}),
    ("lokr-dora-out", KronModel, "lokr", 2, 1, {"factor": 4, "dora_wd": True, "wd_on_output": True}),
    ("lokr-dora-in", KronModel, "lokr", 2, 1, {"factor": 4, "dora_wd": True, "wd_on_output": False}),
    ("glora", Tiny, "glora", 8, 4, {}),
    ("full", Tiny, "full", 8, 4, {}),
    ("diag-oft", OFTModel, "diag-oft", 4, 0, {}),
    ("diag-oft-constrained-rescaled", OFTModel, "diag-oft", 4, 0, {"constraint": 0.01, "rescaled": True}),
    ("boft", OFTModel, "boft", 4, 0, {}),
    ("boft-constrained-rescaled", OFTModel, "boft", 4, 0, {"constraint": 0.01, "rescaled": True}),
]


@pytest.mark.parametrize("case,model,algo,dim,alpha,kwargs", CASES, ids=[c[0] for c in CASES])
def test_parity(case, model, algo, dim, alpha, kwargs, tmp_path):
    run_parity(case, model(), algo, tmp_path, dim=dim, alpha=alpha, **kwargs)


def test_parity_ia3_output_and_input(tmp_path):
    preset = {"target_module": ["Linear", "Conv2d"],
              "name_algo_map": {"lin_in": {"algo": "ia3", "train_on_input": True},
                                "conv_in": {"algo": "ia3", "train_on_input": True}}}
    run_parity("ia3", IA3Model(), "ia3", tmp_path, preset=preset)


def test_parity_norm_layer_and_group(tmp_path):
    # train_norm: Linear gets LoCon, LayerNorm/GroupNorm get norm modules.
    model = NormModel()
    torch.manual_seed(0)
    base = copy.deepcopy(model)
    net = build_network(model, "locon", 8, 4, train_norm=True)
    _, adapters = save_and_parse(net, str(tmp_path / "norm.safetensors"), {"train_norm": True})
    algos = {n: a.algo for n, a in adapters.items()}
    assert algos == {"lycoris_lin": "locon", "lycoris_ln": "norm", "lycoris_gn": "norm"}
    names, xs, live, mods = lycoris_names(base), make_inputs(base), dict(model.named_modules()), \
        dict(base.named_modules())
    worst = 0.0
    for m in (1.0, 0.5, -0.7):
        net.set_multiplier(m)
        for name, ad in adapters.items():
            p = names[name]
            with torch.no_grad():
                y_base, y_ref = mods[p](xs[p]), live[p](xs[p])
                y_m = ours_merged(mods[p], ad, xs[p], m)
                y_b = ad.bypass(xs[p], y_base, no_host(m), spec_for(mods[p])).as_subclass(torch.Tensor)
            worst = max(worst, ratio(y_m, y_ref, y_base), ratio(y_b, y_ref, y_base), ratio(y_b, y_m, y_base))
    WORST["norm"] = worst
    assert worst <= 1e-4


@pytest.mark.parametrize("masks", ["none", "several"])
def test_parity_tlora(masks, tmp_path):
    R = 8
    def mask(r_active, length=R):
        v = torch.zeros(length)
        v[:r_active] = 1
        return v
    mask_list = [None] if masks == "none" else [mask(1), mask(3), mask(8), mask(5, length=12), mask(2, length=5)]
    run_parity(f"tlora-{masks}", TLoRAModel(), "tlora", tmp_path, dim=R, alpha=4, masks=mask_list)


def test_parity_dylora(tmp_path):
    """DyLoRA: 4.1.3's training forward draws a random rank per call, so the reference is LyCORIS's own loader
    (`create_lycoris_from_weights`, which builds LoCon modules from these keys) and its rebuild forward. That
    loader cannot read DyLoRA *conv* modules (their lora_up is saved 2-D (out, r), LoCon's copy_ wants
    (out, r, 1, 1)), so convs are compared with the LoCon maths written out: W + m·(alpha/r)·up@down."""
    from safetensors.torch import load_file
    from lycoris import create_lycoris_from_weights
    import torch.nn.functional as F
    model = Tiny()
    pristine = copy.deepcopy(model)
    path = str(tmp_path / "dylora.safetensors")

    def reference(live, base, adapters, xs, m):
        sd = load_file(path)
        loaded = copy.deepcopy(pristine)
        linear_sd = {k: v for k, v in sd.items() if k.startswith("lycoris_lin.")}
        net, _ = create_lycoris_from_weights(m, path, loaded, weights_sd=linear_sd)
        net.apply_to()
        net.set_multiplier(m)
        mods = dict(loaded.named_modules())
        out = {}
        with torch.no_grad():
            for p, x in xs.items():
                name = "lycoris_" + p.replace(".", "_")
                if name not in adapters:
                    continue
                if p == "lin":
                    out[p] = mods[p](x)
                    continue
                mod = dict(pristine.named_modules())[p]
                up, down = sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"]
                r = down.shape[0]
                dw = (up.reshape(-1, r) @ down.reshape(r, -1)).reshape(mod.weight.shape)
                s = float(sd[f"{name}.alpha"]) / r
                conv = F.conv2d if mod.weight.dim() == 4 else F.conv1d
                out[p] = conv(x, mod.weight + m * s * dw, mod.bias, mod.stride, mod.padding, mod.dilation,
                              mod.groups)
        return out

    run_parity("dylora", model, "dylora", tmp_path, dim=8, alpha=4, block_size=4, expect_algo="locon",
               reference=reference)


def test_dylora_rank_cap(tmp_path):
    """rank_cap keeps the first k ranks; scale alpha/r_full (A1111 `dyn`) or alpha/k with rank_cap_rescale."""
    model = Tiny()
    w = model.lin.weight.detach().clone()
    net = build_network(model, "dylora", 8, 4, block_size=4)
    path = str(tmp_path / "dy.safetensors")
    lf, full = save_and_parse(net, path, {})
    _, capped = save_and_parse(net, path, {}, rank_cap=4)
    _, rescaled = save_and_parse(net, path, {}, rank_cap=4, rank_cap_rescale=True)
    up, down = lf.tensors["lycoris_lin.lora_up.weight"], lf.tensors["lycoris_lin.lora_down.weight"]
    a = capped["lycoris_lin"]
    assert a.rank == 4 and full["lycoris_lin"].rank == 8
    assert a.scale == pytest.approx(4 / 8) and rescaled["lycoris_lin"].scale == pytest.approx(4 / 4)
    expect = w + 0.5 * (4 / 8) * up[:, :4] @ down[:4]
    torch.testing.assert_close(a.merged_weight(w, 0.5), expect, rtol=1e-5, atol=1e-6)


def test_lycoris_merge_applies_s_squared_for_loha_and_lokr(tmp_path):
    """Documents reference §6.1.1: 4.1.3's get_merged_weight scales LoHa/LoKr by s twice; ours (= the rebuild
    forward, checked above) does not. With s = 0.5 the two differ."""
    for algo, model, dim, alpha, kw in (("loha", Tiny(), 8, 4, {}), ("lokr", KronModel(), 2, 1, {"factor": 4})):
        base = copy.deepcopy(model)
        net = build_network(model, algo, dim, alpha, **kw)
        _, adapters = save_and_parse(net, str(tmp_path / f"{algo}.safetensors"), {})
        lyco = {lora.lora_name: lora for lora in net.loras}
        for name, ad in adapters.items():
            w = dict(base.named_modules())[lycoris_names(base)[name]].weight.detach()
            theirs = lyco[name].get_merged_weight(1.0, shape=w.shape)[0].detach()
            ours = ad.merged_weight(w, 1.0)
            s = ad.scale
            assert s == pytest.approx(0.5)
            torch.testing.assert_close(w + (ours - w) * s, theirs, rtol=1e-4, atol=1e-6)


def test_zz_report_worst():
    """Prints the worst parity ratio per case (run with -s to see it)."""
    for case, value in sorted(WORST.items()):
        print(f"parity {case:36s} {value:.2e}")
