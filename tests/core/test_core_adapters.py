# SPDX-License-Identifier: GPL-3.0-or-later
"""Adapter behaviour beyond parity: T-LoRA base caching / masks / conv refusal, LoKr's Kronecker bypass,
reduced-precision bypass, `to()` copies."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from core_parity import spec_for
from lycoris_core.adapters.registry import parse_modules
from lycoris_core.adapters.tlora import tlora_svd_base
from lycoris_core.errors import ShapeMismatchError

SRC = "t.safetensors"


def _tlora(out=16, inp=12, r=8, alpha=4.0, prefix="m", conv=False):
    g = torch.Generator().manual_seed(0)
    k = (1, 1) if conv else ()
    return {f"{prefix}.q_layer.weight": torch.randn(r, inp, *k, generator=g) * 0.3,
            f"{prefix}.p_layer.weight": torch.randn(out, r, *k, generator=g) * 0.3,
            f"{prefix}.lambda_layer": torch.rand(1, r, generator=g) + 0.5, f"{prefix}.alpha": torch.tensor(alpha)}


def _count_svd(monkeypatch):
    calls = []
    real = torch.linalg.svd

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(torch.linalg, "svd", counting)
    return calls


def test_tlora_base_computed_once_and_shared_by_copies(monkeypatch):
    calls = _count_svd(monkeypatch)
    lin = nn.Linear(12, 16)
    a = parse_modules(_tlora(), SRC)["m"]
    spec = spec_for(lin)
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        y = lin(x)
        first = a.bypass(x, y, 1.0, spec)
        a.bypass(x, y, 0.5, spec)
        a.merged_weight(lin.weight.detach(), 1.0)
        b = a.to(dtype=torch.float64)
        b.bypass(x.double(), y.double(), 1.0, spec_for(lin.double()))
    assert len(calls) == 1
    torch.testing.assert_close(first, a.bypass(x, y, 1.0, spec))


def test_tlora_stored_base_skips_svd(monkeypatch):
    lin = nn.Linear(12, 16)
    p0, q0, lam0 = tlora_svd_base(lin.weight.detach(), 8)
    t = _tlora()
    t.update({"m.base_p.weight": p0, "m.base_q.weight": q0, "m.base_lambda": lam0[None]})
    calls = _count_svd(monkeypatch)
    with_base = parse_modules(t, SRC)["m"]
    w = lin.weight.detach()
    merged = with_base.merged_weight(w, 1.0)
    assert not calls
    computed = parse_modules(_tlora(), SRC)["m"].merged_weight(w, 1.0)
    torch.testing.assert_close(merged, computed, rtol=1e-5, atol=1e-6)
    bad = dict(t)
    del bad["m.base_lambda"]
    with pytest.raises(Exception, match="base_lambda"):
        parse_modules(bad, SRC)


def test_tlora_svd_base_pads_like_lycoris():
    w = torch.randn(16, 5)
    p0, q0, lam0 = tlora_svd_base(w, 8)
    assert p0.shape == (16, 8) and q0.shape == (8, 5) and lam0.shape == (8,)
    assert torch.all(lam0[5:] == 1e-6) and torch.all(q0[5:] == 0) and torch.all(p0[:, 5:] == 0)
    torch.testing.assert_close(p0[:, :5] * lam0[:5] @ q0[:5], w, rtol=1e-4, atol=1e-5)


def test_tlora_mask_is_shared_and_read_every_call():
    lin = nn.Linear(12, 16)
    a = parse_modules(_tlora(), SRC)["m"]
    copy = a.to(dtype=torch.float32)
    mask = torch.ones(8)
    a.mask = mask
    assert copy.mask is mask
    x = torch.randn(3, 12)
    with torch.no_grad():
        y = lin(x)
        full = copy.bypass(x, y, 1.0, spec_for(lin))
        mask[3:] = 0  # in place, as the schedule writes it
        part = copy.bypass(x, y, 1.0, spec_for(lin))
        w3 = a.merged_weight(lin.weight.detach(), 1.0)
    assert not torch.allclose(full, part)
    torch.testing.assert_close(part, nn.functional.linear(x, w3, lin.bias), rtol=1e-5, atol=1e-5)


def test_tlora_per_sample_mask_in_bypass():
    lin = nn.Linear(12, 16)
    a = parse_modules(_tlora(), SRC)["m"]
    x = torch.randn(3, 4, 12)
    masks = torch.zeros(3, 8)
    for i, r in enumerate((1, 4, 8)):
        masks[i, :r] = 1
    with torch.no_grad():
        y = lin(x)
        a.mask = masks
        batched = a.bypass(x, y, 0.8, spec_for(lin))
        for i in range(3):
            a.mask = masks[i]
            torch.testing.assert_close(batched[i], a.bypass(x[i], y[i], 0.8, spec_for(lin)), rtol=1e-5, atol=1e-5)
        a.mask = masks
        with pytest.raises(ValueError, match="per-sample"):
            a.merged_weight(lin.weight.detach(), 1.0)


def test_tlora_rejects_conv_kernel_over_one():
    a = parse_modules(_tlora(out=12, inp=8, conv=True), SRC)["m"]
    a.check_target((12, 8, 1, 1), "conv1x1")
    with pytest.raises(ShapeMismatchError, match=r"kernel \(3, 3\).*not supported") as e:
        a.check_target((12, 8, 3, 3), "unet.conv_in")
    assert "'m'" in str(e.value) and "unet.conv_in" in str(e.value)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    with pytest.raises(ShapeMismatchError):
        a.bypass(torch.randn(1, 8, 4, 4), torch.randn(1, 12, 4, 4), 1.0, spec_for(conv))


def test_lokr_linear_bypass_never_builds_the_kronecker(monkeypatch):
    t = {"m.lokr_w1": torch.randn(4, 4), "m.lokr_w2_a": torch.randn(12, 2), "m.lokr_w2_b": torch.randn(2, 16),
         "m.alpha": torch.tensor(1.0)}
    a = parse_modules(t, SRC)["m"]
    lin = nn.Linear(64, 48)
    w = lin.weight.detach()
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        ref = nn.functional.linear(x, a.merged_weight(w, 0.7), lin.bias)
        monkeypatch.setattr(torch, "kron", lambda *a, **k: (_ for _ in ()).throw(AssertionError("kron built")))
        out = a.bypass(x, lin(x), 0.7, spec_for(lin))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d_out,d_in", [(96, 32), (32, 96)], ids=["w1-first", "w2-first"])
@pytest.mark.parametrize("inplace", [True, False])
def test_lokr_full_linear_bypass_both_orders(d_out, d_in, inplace, monkeypatch):
    """Full-matrix LoKr bypass takes the cheaper product order (W1 first when out > in) and equals the merged layer,
    also on a row slice of a wider output (not contiguous), without building the Kronecker product."""
    g = torch.Generator().manual_seed(4)
    a = c = 4
    t = {"m.lokr_w1": torch.randn(a, c, generator=g), "m.lokr_w2": torch.randn(d_out // a, d_in // c, generator=g)}
    ad = parse_modules(t, SRC)["m"]
    lin = nn.Linear(d_in, d_out)
    x = torch.randn(2, 5, d_in, generator=g)
    with torch.no_grad():
        ref = nn.functional.linear(x, ad.merged_weight(lin.weight.detach(), -0.6), lin.bias)
        monkeypatch.setattr(torch, "kron", lambda *a, **k: (_ for _ in ()).throw(AssertionError("kron built")))
        out = (ad.bypass_ if inplace else ad.bypass)(x, lin(x), -0.6, spec_for(lin))
        wide = torch.cat([lin(x), torch.zeros(2, 5, 8)], dim=-1)
        sliced = (ad.bypass_ if inplace else ad.bypass)(x, wide[..., :d_out], -0.6, spec_for(lin))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sliced, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tokens,factorized", [(3, True), (400, False)])
@pytest.mark.parametrize("inplace", [True, False])
def test_loha_linear_bypass_rank_r2_path(tokens, factorized, inplace):
    """LoHa bypass on a linear layer runs (A1·B1)⊙(A2·B2) as the rank-r² product U·V when that is cheaper than
    building ΔW (few tokens here), else builds ΔW; both equal the merged layer (m = 0.7, with alpha)."""
    g = torch.Generator().manual_seed(3)
    r, d_in, d_out = 6, 40, 24
    t = {"m.hada_w1_a": torch.randn(d_out, r, generator=g), "m.hada_w1_b": torch.randn(r, d_in, generator=g),
         "m.hada_w2_a": torch.randn(d_out, r, generator=g), "m.hada_w2_b": torch.randn(r, d_in, generator=g),
         "m.alpha": torch.tensor(3.0)}
    a = parse_modules(t, SRC)["m"]
    assert a.factorized_bypass(tokens, d_in, d_out) is factorized
    lin = nn.Linear(d_in, d_out)
    x = torch.randn(1, tokens, d_in, generator=g)
    with torch.no_grad():
        ref = nn.functional.linear(x, a.merged_weight(lin.weight.detach(), 0.7), lin.bias)
        out = (a.bypass_ if inplace else a.bypass)(x, lin(x), 0.7, spec_for(lin))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_bypass(dtype):
    """Bypass runs in the activation dtype (4.1.3's T-LoRA fails in pure bf16, §6.1.5) and stays close to fp32."""
    g = torch.Generator().manual_seed(1)
    cases = {
        "lora": {"m.lora_up.weight": torch.randn(16, 4, generator=g) * 0.1, "m.lora_down.weight":
                 torch.randn(4, 12, generator=g) * 0.1, "m.alpha": torch.tensor(2.0),
                 "m.dora_scale": torch.rand(16, 1, generator=g) + 1},
        "tlora": _tlora(),
        "oft": {"m.oft_blocks": torch.randn(4, 4, 4, generator=g) * 0.1, "m.rescale": torch.rand(16, 1) + 0.5},
    }
    lin = nn.Linear(12, 16)
    x = torch.randn(2, 3, 12)
    for name, t in cases.items():
        a = parse_modules(t, SRC)["m"]
        with torch.no_grad():
            ref = a.bypass(x, lin(x), 0.8, spec_for(lin))
            low_lin = nn.Linear(12, 16).to(dtype)
            low_lin.load_state_dict(lin.state_dict())
            low = a.to(dtype=dtype).bypass(x.to(dtype), low_lin(x.to(dtype)), 0.8, spec_for(low_lin))
        assert low.dtype == dtype, name
        err = (low.float() - ref).abs().max() / ref.abs().max()
        assert err < 3e-2, (name, err)


def test_dora_eps_comes_from_the_stored_dtype():
    """DoRA adds finfo(eps) of dora_scale's dtype as stored (bf16 files: 2**-7), even when computing in fp32."""
    g = torch.Generator().manual_seed(2)
    up, down = torch.randn(6, 2, generator=g) * 0.1, torch.randn(2, 5, generator=g) * 0.1
    scale = torch.rand(6, 1, generator=g) + 1
    t = {"m.lora_up.weight": up.bfloat16(), "m.lora_down.weight": down.bfloat16(),
         "m.alpha": torch.tensor(1.0, dtype=torch.bfloat16), "m.dora_scale": scale.bfloat16()}
    a = parse_modules(t, SRC)["m"]
    assert a.dora_axis == "output" and a.dora_eps == 2 ** -7
    w = torch.randn(6, 5, generator=g) * 0.01  # small rows make eps visible
    f = a.to(dtype=torch.float32)
    wd = w + 0.5 * up.bfloat16().float() @ down.bfloat16().float()
    norm = wd.norm(dim=1, keepdim=True) + 2 ** -7
    expect = wd * (0.3 * (scale.bfloat16().float() / norm - 1) + 1)
    torch.testing.assert_close(f.merged_weight(w, 0.3), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dora", [None, "output", "input"])
@pytest.mark.parametrize("algo", ["locon", "loha", "lokr"])
def test_merge_into_equals_merged_weight(algo, dora):
    """The in-place merge ComfyUI's patching uses (W += m·ΔW_s; DoRA: W += ΔW_s, then W *= factor) gives the
    merged weight exactly as the out-of-place maths, at a negative multiplier too, and writes into `weight`."""
    g = torch.Generator().manual_seed(5)
    d_out, d_in, r = 16, 12, 4
    t = {"locon": {"m.lora_down.weight": torch.randn(r, d_in, generator=g),
                   "m.lora_up.weight": torch.randn(d_out, r, generator=g)},
         "loha": {"m.hada_w1_a": torch.randn(d_out, r, generator=g), "m.hada_w1_b": torch.randn(r, d_in, generator=g),
                  "m.hada_w2_a": torch.randn(d_out, r, generator=g), "m.hada_w2_b": torch.randn(r, d_in, generator=g)},
         "lokr": {"m.lokr_w1": torch.randn(4, 4, generator=g), "m.lokr_w2_a": torch.randn(4, 2, generator=g),
                  "m.lokr_w2_b": torch.randn(2, 3, generator=g)}}[algo]
    t["m.alpha"] = torch.tensor(2.0)
    if dora == "output":
        t["m.dora_scale"] = torch.rand(d_out, 1, generator=g) + 1
    elif dora == "input":
        t["m.dora_scale"] = torch.rand(1, d_in, generator=g) + 1
    a = parse_modules(t, SRC)["m"]
    w = torch.randn(d_out, d_in, generator=g)
    for m in (1.0, -0.7):
        want = a.merged_weight(w, m)
        work = w.clone()
        got = a.merge_into_(work, m)
        assert got is work
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert float((want - w).abs().max()) > 1e-3


@pytest.mark.parametrize("form", ["full", "decomposed", "tucker"])
def test_lokr_conv_bypass_without_kronecker(form, monkeypatch):
    """LoKr bypass on an ungrouped conv (stride, padding, dilation) convolves with W2 per group of input channels
    and mixes with W1, never building ΔW = W1 ⊗ W2, and equals the merged conv (m = -0.8)."""
    g = torch.Generator().manual_seed(6)
    a, c, b, d, r = 2, 3, 4, 2, 3
    t = {"m.lokr_w1": torch.randn(a, c, generator=g), "m.alpha": torch.tensor(2.0)}
    if form == "full":
        t["m.lokr_w2"] = torch.randn(b, d, 3, 3, generator=g)
    elif form == "decomposed":
        t["m.lokr_w2_a"] = torch.randn(b, r, generator=g)
        t["m.lokr_w2_b"] = torch.randn(r, d * 9, generator=g)
    else:
        t["m.lokr_t2"] = torch.randn(r, r, 3, 3, generator=g)
        t["m.lokr_w2_a"] = torch.randn(r, b, generator=g)
        t["m.lokr_w2_b"] = torch.randn(r, d, generator=g)
    ad = parse_modules(t, SRC)["m"]
    conv = nn.Conv2d(c * d, a * b, 3, stride=2, padding=2, dilation=2)
    x = torch.randn(2, c * d, 9, 8, generator=g)
    with torch.no_grad():
        w = ad.merged_weight(conv.weight.detach(), -0.8)
        ref = nn.functional.conv2d(x, w.reshape(conv.weight.shape), conv.bias, stride=2, padding=2, dilation=2)
        monkeypatch.setattr(torch, "kron", lambda *a, **k: (_ for _ in ()).throw(AssertionError("kron built")))
        out = ad.bypass(x, conv(x), -0.8, spec_for(conv))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_loha_conv_bypass_rank_r2_path(stride, monkeypatch):
    """LoHa bypass on an ungrouped conv runs as a conv with the r² face-splitting filters V then a 1x1 mix by U
    (ΔW is never built here: few filters, many positions), equal to the merged conv (m = 0.6)."""
    g = torch.Generator().manual_seed(8)
    r, cin, cout = 2, 6, 16
    t = {"m.hada_w1_a": torch.randn(cout, r, generator=g), "m.hada_w1_b": torch.randn(r, cin * 9, generator=g),
         "m.hada_w2_a": torch.randn(cout, r, generator=g), "m.hada_w2_b": torch.randn(r, cin * 9, generator=g),
         "m.alpha": torch.tensor(1.0)}
    ad = parse_modules(t, SRC)["m"]
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
    x = torch.randn(2, cin, 12, 10, generator=g)
    with torch.no_grad():
        w = ad.merged_weight(conv.weight.detach(), 0.6)
        ref = nn.functional.conv2d(x, w.reshape(conv.weight.shape), conv.bias, stride=stride, padding=1)
        monkeypatch.setattr(ad, "delta_weight", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ΔW built")))
        out = ad.bypass(x, conv(x), 0.6, spec_for(conv))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
