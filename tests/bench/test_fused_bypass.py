# SPDX-License-Identifier: GPL-3.0-or-later
"""The fused in-place bypass paths (`Adapter.bypass_`, added for the benchmark targets of issue 8) equal the
out-of-place `bypass` for every algorithm that has one: LoRA/LoCon, LoKr (full, decomposed, decomposed W1),
LoHa, DoRA (both axes), T-LoRA (no mask, full, partial, empty and over-long masks, the CPU rank slicing), with
python and device-tensor multipliers, on whole outputs and on a row slice of a wider (fused) output."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lycoris_core.adapters.registry import parse_modules

IN, OUT, R = 12, 16, 4
SRC = "t.safetensors"


class NoHostTensor(torch.Tensor):
    """A 0-d multiplier whose value must not reach the host (a device multiplier would sync)."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("host read of the multiplier")

    item = __bool__ = __float__ = __int__ = __index__ = tolist = _refuse


def _spec(lin: nn.Linear):
    from lycoris_core.layer import LayerSpec

    return LayerSpec("linear", tuple(lin.weight.shape),
                     lambda dtype, device: lin.weight.detach().to(device=device, dtype=dtype),
                     lambda dtype, device: None if lin.bias is None else lin.bias.detach().to(device=device,
                                                                                               dtype=dtype))


def _tensors(case: str) -> dict:
    g = torch.Generator().manual_seed(sum(map(ord, case)))

    def n(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s

    t = {}
    if case.startswith(("locon", "dora")):
        t = {"lora_up.weight": n(OUT, R), "lora_down.weight": n(R, IN), "alpha": torch.tensor(2.0)}
        if case == "dora_out":
            t["dora_scale"] = n(OUT, 1).abs() + 1.0
        if case == "dora_in":
            t["dora_scale"] = n(1, IN).abs() + 1.0
    elif case == "lokr_full":
        t = {"lokr_w1": n(4, 3), "lokr_w2": n(4, 4)}
    elif case == "lokr_dec":
        t = {"lokr_w1": n(4, 3), "lokr_w2_a": n(4, 2), "lokr_w2_b": n(2, 4), "alpha": torch.tensor(1.0)}
    elif case == "lokr_w1dec":
        t = {"lokr_w1_a": n(4, 2), "lokr_w1_b": n(2, 3), "lokr_w2": n(4, 4), "alpha": torch.tensor(3.0)}
    elif case == "loha":
        t = {"hada_w1_a": n(OUT, R), "hada_w1_b": n(R, IN), "hada_w2_a": n(OUT, R), "hada_w2_b": n(R, IN),
             "alpha": torch.tensor(2.0)}
    elif case == "tlora":
        t = {"q_layer.weight": n(8, IN), "p_layer.weight": n(OUT, 8), "lambda_layer": n(1, 8).abs() + 0.5,
             "alpha": torch.tensor(4.0)}
    return {f"m.{k}": v for k, v in t.items()}


CASES = ["locon", "dora_out", "dora_in", "lokr_full", "lokr_dec", "lokr_w1dec", "loha", "tlora"]
TLORA_MASKS = {"none": None, "all": torch.ones(8), "partial": torch.tensor([1.0] * 3 + [0.0] * 5),
               "empty": torch.zeros(8), "long": torch.tensor([1.0] * 5 + [0.0] * 7), "short": torch.ones(6)}


def _multipliers():
    return [("1", 1.0), ("-0.7", -0.7), ("tensor 0.5", torch.tensor(0.5).as_subclass(NoHostTensor))]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "row_slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bypass_inplace_equals_bypass(case, sliced, dtype):
    torch.manual_seed(0)
    lin = nn.Linear(IN, OUT).to(dtype)
    adapter = parse_modules(_tensors(case), SRC)["m"].to(dtype=dtype)
    spec = _spec(lin)
    x = torch.randn(2, 5, IN).to(dtype)
    masks = TLORA_MASKS.items() if case == "tlora" else [("-", None)]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for mask_name, mask in masks:
        if case == "tlora":
            adapter.mask = None if mask is None else mask.to(dtype)
        for m_name, m in _multipliers():
            with torch.inference_mode():
                y = lin(x)
                want = adapter.bypass(x, y.clone(), m, spec)
                if sliced:  # y is the middle rows of a fused [a | y | b] output
                    full = torch.randn(2, 5, OUT + 10).to(dtype)
                    keep = full.clone()
                    full[..., 3:3 + OUT] = y
                    view = full.narrow(-1, 3, OUT)
                else:
                    view = y.clone()
                got = adapter.bypass_(x, view, m, spec)
            if case != "dora_in":
                assert got is view, f"{case}: no in-place path"
            got, want = (t.as_subclass(torch.Tensor) for t in (got, want))
            torch.testing.assert_close(got, want, **tol, msg=f"{case} mask={mask_name} m={m_name}")
            if sliced:
                torch.testing.assert_close(full[..., :3], keep[..., :3], rtol=0, atol=0)
                torch.testing.assert_close(full[..., 3 + OUT:], keep[..., 3 + OUT:], rtol=0, atol=0)
