# SPDX-License-Identifier: GPL-3.0-or-later
"""T-LoRA core (issue 5): schedule hand values beyond the §4.1 tables (test_core_schedule.py), the exact SVD base
(float64 Gram route vs torch.linalg.svd), base tokens (one file on two models), masks of another length than the
module rank, and the bypass maths with the folded scale."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from core_parity import spec_for
from lycoris_core.adapters.registry import parse_modules
from lycoris_core.adapters.tlora import tlora_svd_base
from lycoris_core.tlora_schedule import active_rank, fill_mask_

SRC = "t.safetensors"


# ------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("t,max_rank,min_rank,alpha,want", [
    # floor(((1000 - t)/1000)^alpha · (R - R_min)) + R_min, computed by hand
    (400, 8, 3, 1.5, 5),    # 0.6^1.5 = 0.4648 -> ·5 = 2.32 -> 2 + 3
    (100, 16, 1, 1.0, 14),  # 0.9·15 = 13.5 -> 13 + 1
    (999, 16, 4, 1.0, 4),   # 0.001·12 -> 0 + 4
    (0, 16, 4, 3.0, 16),
    (500, 4, 1, 1.0, 2),    # SimpleTuner defaults (linear_dim 4): 0.5·3 = 1.5 -> 1 + 1
    (250, 32, 32, 1.0, 32),  # min_rank == max_rank: always full (official SDXL --min_rank=32 at rank 32)
    (750, 64, 32, 1.0, 40),  # official SDXL defaults rank 64 / min 32: 0.25·32 = 8 -> 8 + 32
    (984, 64, 1, 1.0, 2),    # 0.016·63 = 1.008 -> 1 + 1 (int(984.5) = 984 gives 2; 984.5 itself would give 1)
])
def test_schedule_hand_values(t, max_rank, min_rank, alpha, want):
    assert active_rank(t, max_rank, min_rank, alpha) == want
    mask = torch.empty(max_rank)
    fill_mask_(mask, torch.tensor(float(t)), max_rank, min_rank, alpha)
    assert mask.tolist() == [1.0] * want + [0.0] * (max_rank - want)


# ------------------------------------------------------------------------------------------- SVD base
def _reference(w: torch.Tensor, r: int):
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return u[:, :r], s[:r], vh[:r]


@pytest.mark.parametrize("shape,r", [((140, 300), 16), ((300, 140), 16), ((160, 160), 32), ((128, 512), 8),
                                     ((130, 129), 129)])
def test_gram_svd_is_exact(shape, r):
    """The float64 Gram route gives the top-r SVD to fp32 precision: singular values, and every partial base
    term Σ_{i<k} σ_i u_i v_iᵀ (what the mask selects) for every cut k; the vectors are orthonormal."""
    g = torch.Generator().manual_seed(sum(shape) + r)
    w = torch.randn(shape, generator=g) / shape[1] ** 0.5
    u, s, vh = _reference(w, r)
    p0, q0, lam0 = tlora_svd_base(w, r, method="gram")
    assert p0.dtype == q0.dtype == lam0.dtype == torch.float32
    assert p0.shape == (shape[0], r) and q0.shape == (r, shape[1]) and lam0.shape == (r,)
    k_max = min(r, *shape)
    torch.testing.assert_close(lam0[:k_max].double(), s[:k_max], rtol=1e-6, atol=1e-7)
    for k in sorted({1, 2, k_max // 2, k_max - 1, k_max} - {0}):
        want = (u[:, :k] * s[:k]) @ vh[:k]
        got = (p0[:, :k].double() * lam0[:k].double()) @ q0[:k].double()
        assert float((got - want).abs().max()) <= 2e-6 * float(s[0]), k
    eye = torch.eye(k_max, dtype=torch.float64)
    torch.testing.assert_close(p0[:, :k_max].double().T @ p0[:, :k_max].double(), eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(q0[:k_max].double() @ q0[:k_max].double().T, eye, atol=1e-5, rtol=0)
    # and it agrees with LyCORIS's own route (fp32 torch.linalg.svd) as closely as fp32 allows
    ps, qs, ls = tlora_svd_base(w, r, method="svd")
    for k in (1, k_max):
        a = (p0[:, :k] * lam0[:k]) @ q0[:k]
        b = (ps[:, :k] * ls[:k]) @ qs[:k]
        assert float((a - b).abs().max()) <= 1e-5 * float(s[0])


def test_gram_svd_rank_deficient_and_padding():
    """A rank-5 weight: the top-5 term is W itself, σ_5.. are ~0 with unit (not NaN) vectors; r beyond
    min(out, in) is zero-padded with λ0 = 1e-6 exactly like LyCORIS."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(200, 5, generator=g) @ torch.randn(5, 150, generator=g)
    p0, q0, lam0 = tlora_svd_base(w, 16, method="gram")
    assert torch.isfinite(p0).all() and torch.isfinite(q0).all() and torch.isfinite(lam0).all()
    torch.testing.assert_close((p0[:, :5] * lam0[:5]) @ q0[:5], w, rtol=0, atol=1e-4 * float(w.abs().max()))
    assert float(lam0[5:].abs().max()) <= 1e-4 * float(lam0[0])
    narrow = torch.randn(140, 6, generator=g)
    for method in ("gram", "svd"):
        p, q, lam = tlora_svd_base(narrow, 8, method=method)
        assert torch.all(lam[6:] == 1e-6) and torch.all(q[6:] == 0) and torch.all(p[:, 6:] == 0)


def test_auto_method_picks_gram_for_large():
    calls = []
    real = torch.linalg.eigh
    torch.linalg.eigh = lambda *a, **k: calls.append(a[0].shape) or real(*a, **k)
    try:
        tlora_svd_base(torch.randn(16, 12), 4)
        assert not calls
        tlora_svd_base(torch.randn(128, 384), 4)
        assert calls == [(128, 128)]
    finally:
        torch.linalg.eigh = real


# ------------------------------------------------------------------------------------------- adapter
def _tlora(out=16, inp=12, r=8, alpha=4.0):
    g = torch.Generator().manual_seed(0)
    return {"m.q_layer.weight": torch.randn(r, inp, generator=g) * 0.3,
            "m.p_layer.weight": torch.randn(out, r, generator=g) * 0.3,
            "m.lambda_layer": torch.rand(1, r, generator=g) + 0.5, "m.alpha": torch.tensor(alpha)}


def test_base_token_one_file_two_models():
    """prepare_base with a token (the weight's hash) replaces a base made for another weight, keeps one made for
    the same; copies made earlier rebuild their factors when the token changes."""
    a = parse_modules(_tlora(), SRC)["m"]
    la, lb = nn.Linear(12, 16), nn.Linear(12, 16)
    x = torch.randn(3, 12)
    with torch.no_grad():
        a.prepare_base(la.weight, token="A")
        copy = a.to(dtype=torch.float32)
        ya = copy.bypass(x, la(x), 1.0, spec_for(la))
        a.prepare_base(lb.weight, token="B")
        assert a.base_token == "B" and copy.base_token == "B"
        yb = copy.bypass(x, lb(x), 1.0, spec_for(lb))
        want_b = nn.functional.linear(x, a.merged_weight(lb.weight, 1.0), lb.bias)
        torch.testing.assert_close(yb, want_b, rtol=1e-5, atol=1e-5)
        base_b = a._shared["tlora_base"]
        a.prepare_base(lb.weight * 0, token="B")  # same token: kept, no recompute
        assert a._shared["tlora_base"] is base_b
        a.prepare_base(la.weight, token="A")
        torch.testing.assert_close(copy.bypass(x, la(x), 1.0, spec_for(la)), ya)


def test_prepare_base_from_precomputed_svd_rounds_to_file_dtype():
    t = {k: v.to(torch.bfloat16) for k, v in _tlora().items()}
    a = parse_modules(t, SRC)["m"]
    w = torch.randn(16, 12)
    svd = tlora_svd_base(w, 8)
    a.prepare_base(svd=svd, token="w")
    for got, raw in zip(a._shared["tlora_base"], svd):
        assert torch.equal(got, raw.reshape(got.shape).to(torch.bfloat16).float())
    with pytest.raises(ValueError, match="rank 4"):
        parse_modules(_tlora(), SRC)["m"].prepare_base(svd=tlora_svd_base(w, 4), token="x")


@pytest.mark.parametrize("mask_len", [4, 8, 12])
def test_mask_length_differs_from_rank(mask_len):
    """A mask longer than the module rank is truncated; a shorter one is padded with ones (extra ranks on)."""
    a = parse_modules(_tlora(r=8), SRC)["m"]
    lin = nn.Linear(12, 16)
    x = torch.randn(2, 12)
    mask = torch.zeros(mask_len)
    mask[:3] = 1
    effective = torch.ones(8)
    effective[:min(mask_len, 8)] = mask[:8]
    with torch.no_grad():
        a.mask = mask
        got = a.bypass(x, lin(x), 1.0, spec_for(lin))
        a.mask = effective
        want = a.bypass(x, lin(x), 1.0, spec_for(lin))
    torch.testing.assert_close(got, want)
    assert int(effective.sum()) == {4: 7, 8: 3, 12: 3}[mask_len]


def test_bypass_equals_written_out_maths():
    """Δ(x) = m·s·[P((Qx)⊙λμ) − P0((Q0x)⊙λ0μ)] with the scale folded into the diagonal."""
    t = _tlora(alpha=2.0)
    a = parse_modules(t, SRC)["m"]
    lin = nn.Linear(12, 16)
    x = torch.randn(5, 12)
    mu = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.float32)
    p0, q0, lam0 = tlora_svd_base(lin.weight.detach(), 8)
    q, p, lam = t["m.q_layer.weight"], t["m.p_layer.weight"], t["m.lambda_layer"].reshape(-1)
    s = 2.0 / 8
    with torch.no_grad():
        a.mask = mu
        got = a.bypass(x, lin(x), 0.7, spec_for(lin)) - lin(x)
    want = 0.7 * s * (((x @ q.T) * (lam * mu)) @ p.T - ((x @ q0.T) * (lam0 * mu)) @ p0.T)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
