# SPDX-License-Identifier: GPL-3.0-or-later
"""parse_modules / detect_algorithm: grouping, MODULE_LIST order, partner validation, unknown keys, scales."""
from __future__ import annotations

import pytest
import torch

from lycoris_core.adapters.registry import detect_algorithm, parse_modules
from lycoris_core.errors import AdapterFormatError, ShapeMismatchError

SRC = "/loras/x.safetensors"


def _locon(prefix="lycoris_transformer_blocks_0_attn_to_q", r=2, alpha=1.0):
    return {f"{prefix}.lora_up.weight": torch.randn(6, r), f"{prefix}.lora_down.weight": torch.randn(r, 5),
            f"{prefix}.alpha": torch.tensor(alpha, dtype=torch.bfloat16)}


def test_detection_order():
    assert detect_algorithm({"lora_up.weight", "lora_down.weight"}) == "locon"
    assert detect_algorithm({"hada_w1_a", "on_input"}) == "loha"  # LoHa before IA3 in MODULE_LIST
    assert detect_algorithm({"weight", "on_input"}) == "ia3"
    assert detect_algorithm({"lokr_w1_a", "lokr_w1_b", "lokr_w2"}) == "lokr"
    assert detect_algorithm({"diff"}) == "full"
    assert detect_algorithm({"w_norm", "b_norm"}) == "norm"
    assert detect_algorithm({"oft_blocks"}, {"oft_blocks": torch.zeros(2, 4, 4)}) == "diag-oft"
    assert detect_algorithm({"oft_blocks"}, {"oft_blocks": torch.zeros(2, 2, 4, 4)}) == "boft"
    assert detect_algorithm({"a1.weight", "a2.weight"}) == "glora"
    assert detect_algorithm({"q_layer.weight", "lambda_layer"}) == "tlora"
    assert detect_algorithm({"something"}) is None


def test_groups_on_first_dot_and_reads_alpha_as_float():
    mods = parse_modules(_locon("lycoris_single_transformer_blocks_3_attn_to_qkv_mlp_proj", r=4, alpha=2.0), SRC)
    (name, a), = mods.items()
    assert name == "lycoris_single_transformer_blocks_3_attn_to_qkv_mlp_proj"
    assert (a.algo, a.rank, a.alpha, a.scale) == ("locon", 4, 2.0, 0.5)
    assert a.expected_weight_shape() == (6, 5)


@pytest.mark.parametrize("alpha", [0.0, None])
def test_alpha_zero_or_absent_means_scale_one(alpha):
    t = _locon(r=4, alpha=alpha or 0.0)
    if alpha is None:
        t = {k: v for k, v in t.items() if not k.endswith(".alpha")}
    assert next(iter(parse_modules(t, SRC).values())).scale == 1.0


def test_lokr_full_matrix_ignores_alpha():
    t = {"m.lokr_w1": torch.randn(2, 2), "m.lokr_w2": torch.randn(3, 4),
         "m.alpha": torch.tensor(10000.0, dtype=torch.bfloat16)}
    a = parse_modules(t, SRC)["m"]
    assert a.rank is None and a.scale == 1.0 and a.alpha == 9984.0
    assert a.expected_weight_shape() == (6, 8)


@pytest.mark.parametrize("keys,missing", [
    ({"lora_up.weight": (4, 2), "alpha": ()}, "lora_down.weight"),
    ({"hada_w1_a": (4, 2), "hada_w1_b": (2, 3), "hada_w2_a": (4, 2)}, "hada_w2_b"),
    ({"lokr_w1": (2, 2), "alpha": ()}, "lokr_w2"),
    ({"lokr_w1_a": (2, 1), "lokr_w2": (2, 2)}, "lokr_w1_b"),
    ({"q_layer.weight": (2, 3), "lambda_layer": (1, 2)}, "p_layer.weight"),
    ({"weight": (4,), "on_input": ()}, None),
])
def test_missing_partner_named(keys, missing):
    t = {f"lycoris_blk.{k}": torch.randn(*s) if s else torch.tensor(1.0) for k, s in keys.items()}
    if missing is None:
        parse_modules(t, SRC)
        return
    with pytest.raises(AdapterFormatError) as e:
        parse_modules(t, SRC)
    msg = str(e.value)
    assert SRC in msg and "lycoris_blk" in msg and missing in msg


def test_partner_without_detection_key():
    t = {"m.lora_down.weight": torch.randn(2, 3), "m.alpha": torch.tensor(1.0)}
    with pytest.raises(AdapterFormatError, match=r"unknown key set.*lora_up\.weight") as e:
        parse_modules(t, SRC)
    assert SRC in str(e.value) and "'m'" in str(e.value)


def test_unknown_keys_listed():
    with pytest.raises(AdapterFormatError, match=r"unknown key set \['bar', 'foo'\]"):
        parse_modules({"m.foo": torch.zeros(1), "m.bar": torch.zeros(1)}, SRC)
    t = _locon("m")
    t["m.set_weight"] = torch.zeros(1)
    with pytest.raises(AdapterFormatError, match=r"\['set_weight'\]") as e:
        parse_modules(t, SRC)
    assert SRC in str(e.value)
    assert parse_modules(t, SRC, strict=False)["m"].algo == "locon"
    with pytest.raises(AdapterFormatError, match="not '<module>.<tensor>'"):
        parse_modules({"loose_key": torch.zeros(1)}, SRC)


def test_inconsistent_shapes_named():
    t = {"m.lora_up.weight": torch.randn(4, 3), "m.lora_down.weight": torch.randn(2, 5)}
    with pytest.raises(AdapterFormatError, match="'lora_up.weight'"):
        parse_modules(t, SRC)


def test_check_target_message():
    a = parse_modules(_locon("lycoris_x"), SRC)["lycoris_x"]
    a.check_target((6, 5), "ok")
    with pytest.raises(ShapeMismatchError) as e:
        a.check_target((6, 7), "double_blocks.0.img_attn.qkv[0:6]")
    msg = str(e.value)
    assert "lycoris_x" in msg and "lora_down.weight" in msg and "(6, 5)" in msg and "(6, 7)" in msg
    assert "another model" in msg


def test_dylora_rank_cap_only_truncates_locon():
    t = _locon("m", r=8, alpha=4.0)
    t.update({"n.diff": torch.randn(3, 3)})
    mods = parse_modules(t, SRC, rank_cap=2)
    assert mods["m"].rank == 2 and mods["m"].tensors["lora_up.weight"].shape == (6, 2)
    assert mods["m"].scale == 0.5  # alpha / full rank, as the A1111 extension's dyn=
    assert parse_modules(t, SRC, rank_cap=2, rank_cap_rescale=True)["m"].scale == 2.0
    assert parse_modules(t, SRC, rank_cap=16)["m"].rank == 8
