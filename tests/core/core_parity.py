# SPDX-License-Identifier: GPL-3.0-or-later
"""Parity harness for tests/core: build a LyCORIS network with lycoris-lora itself on a tiny torch model (as
SimpleTuner does), randomize it, save it, read it back with lycoris_core, and compare our merged and bypass
outputs with LyCORIS's live rebuild forward (what SimpleTuner validation renders) layer by layer.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")

import torch  # noqa: E402

torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine: threads only add contention
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lycoris_core.adapters.registry import parse_modules  # noqa: E402
from lycoris_core.layer import LayerSpec  # noqa: E402
from lycoris_core.safetensors_file import read_lycoris_file  # noqa: E402

TARGETS = ["Linear", "Conv1d", "Conv2d", "LayerNorm", "GroupNorm"]
MULTIPLIERS = (1.0, 0.5, -0.7)
BOUND = 1e-4
_PRESET_ATTRS = ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "LORA_PREFIX", "MODULE_ALGO_MAP",
                 "NAME_ALGO_MAP", "USE_FNMATCH", "TARGET_EXCLUDE_NAME")

#: worst ratio seen per case id, filled by run_parity (printed by the report test with -s)
WORST: dict[str, float] = {}


@contextlib.contextmanager
def lycoris_preset(preset: dict):
    """Apply a LyCORIS preset (process-global class state) and restore the previous state afterwards."""
    from lycoris import LycorisNetwork
    saved = {k: copy.copy(getattr(LycorisNetwork, k)) for k in _PRESET_ATTRS}
    try:
        LycorisNetwork.apply_preset(preset)
        yield
    finally:
        for k, v in saved.items():
            setattr(LycorisNetwork, k, v)


class NoHostTensor(torch.Tensor):
    """A tensor whose value cannot reach the host: .item(), bool(), float(), int(), tolist() raise. Ops on it
    return NoHostTensor too, so any host read or python branch on a value derived from it fails the test."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("a host read of a device multiplier / timestep (would sync the device)")

    item = __bool__ = __float__ = __int__ = __index__ = tolist = numpy = _refuse


def no_host(value: float) -> torch.Tensor:
    """A 0-d NoHostTensor holding `value`."""
    return torch.tensor(float(value)).as_subclass(NoHostTensor)


def spec_for(mod: nn.Module) -> LayerSpec:
    """A LayerSpec for a plain torch layer."""
    def weight(dtype, device):
        return mod.weight.detach().to(device=device, dtype=dtype)

    def bias(dtype, device):
        return None if mod.bias is None else mod.bias.detach().to(device=device, dtype=dtype)

    shape = tuple(mod.weight.shape)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        conv = dict(stride=mod.stride, padding=mod.padding, dilation=mod.dilation, groups=mod.groups)
        return LayerSpec("conv", shape, weight, bias, conv=conv)
    if isinstance(mod, nn.LayerNorm):
        return LayerSpec("norm", shape, weight, bias,
                         norm=dict(type="layer", eps=mod.eps, normalized_shape=tuple(mod.normalized_shape)))
    if isinstance(mod, nn.GroupNorm):
        return LayerSpec("norm", shape, weight, bias, norm=dict(type="group", eps=mod.eps, num_groups=mod.num_groups))
    return LayerSpec("linear", shape, weight, bias)


def forward_with(mod: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The layer's op with replacement parameters."""
    if isinstance(mod, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
        return fn(x, weight, bias, stride=mod.stride, padding=mod.padding, dilation=mod.dilation, groups=mod.groups)
    if isinstance(mod, nn.LayerNorm):
        return F.layer_norm(x, mod.normalized_shape, weight, bias, mod.eps)
    if isinstance(mod, nn.GroupNorm):
        return F.group_norm(x, mod.num_groups, weight, bias, mod.eps)
    raise TypeError(type(mod))


def ours_merged(mod, adapter, x, m):
    """op(x, merged_weight(W, m), merged_bias(b, m) or b) in fp32."""
    w = mod.weight.detach().float()
    b = None if mod.bias is None else mod.bias.detach().float()
    nb = adapter.merged_bias(b, m)
    return forward_with(mod, x, adapter.merged_weight(w, m), b if nb is None else nb)


def randomize_(net: nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Add N(0, std²) noise to every adapter parameter (several are zero-initialized)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def make_inputs(model: nn.Module, seed: int = 2) -> dict[str, torch.Tensor]:
    """One random input per leaf layer of `model`, sized for it (linear inputs get 2 leading dims)."""
    g = torch.Generator().manual_seed(seed)
    xs = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            xs[name] = torch.randn(2, 3, mod.in_features, generator=g)
        elif isinstance(mod, nn.Conv2d):
            xs[name] = torch.randn(2, mod.in_channels, 7, 6, generator=g)
        elif isinstance(mod, nn.Conv1d):
            xs[name] = torch.randn(2, mod.in_channels, 9, generator=g)
        elif isinstance(mod, nn.LayerNorm):
            xs[name] = torch.randn(2, 3, *mod.normalized_shape, generator=g) * 2 + 0.5
        elif isinstance(mod, nn.GroupNorm):
            xs[name] = torch.randn(2, mod.num_channels, 4, 5, generator=g) * 2 + 0.5
    return xs


def build_network(model: nn.Module, algo: str, dim: int, alpha: float, preset: dict | None = None, **kwargs):
    """create_lycoris(...) as SimpleTuner does (apply_preset first), then apply_to() and randomize."""
    from lycoris import create_lycoris
    preset = preset or {"target_module": TARGETS}
    with lycoris_preset(preset):
        net = create_lycoris(model, 1.0, dim, alpha, algo=algo, **kwargs)
    net.apply_to()
    randomize_(net)
    return net


def save_and_parse(net, path: str, config: dict, **parse_kwargs):
    """network.save_weights(fp32, lycoris_config metadata), then read_lycoris_file + parse_modules."""
    net.save_weights(path, torch.float32, {"lycoris_config": json.dumps(config)})
    lf = read_lycoris_file(path)
    return lf, parse_modules(lf.tensors, path, **parse_kwargs)


def ratio(y, y_ref, y_base) -> float:
    """max|y − y_ref| / max|y_ref − y_base| (relative to the adapter's own effect)."""
    effect = (y_ref - y_base).abs().max().item()
    assert effect > 1e-6, "the adapter has no effect: the parity check would be vacuous"
    return (y - y_ref).abs().max().item() / effect


def lycoris_names(model: nn.Module) -> dict[str, str]:
    """LyCORIS module name -> module path, for every leaf of `model`."""
    return {"lycoris_" + name.replace(".", "_"): name for name, _ in model.named_modules() if name}


def run_parity(case: str, model: nn.Module, algo: str, tmp_path, *, dim: int = 8, alpha: float = 4,
               preset: dict | None = None, multipliers=MULTIPLIERS, masks=None, expect_algo: str | None = None,
               reference=None, **kwargs) -> dict[str, float]:
    """Compare our merged and bypass outputs with LyCORIS's rebuild forward for every adapted layer.

    masks: for T-LoRA, a list of (R,) masks (None = no mask) tried at every multiplier.
    reference(live_model, base_model, adapters, x_by_path, m) -> {path: y_ref}: override of the live forward
    (cases where 4.1.3's forward is not the truth, e.g. DyLoRA's random-rank forward).
    Returns the worst ratio per comparison kind and records it in WORST[case].
    """
    torch.manual_seed(0)
    base = copy.deepcopy(model)
    net = build_network(model, algo, dim, alpha, preset, **kwargs)
    path = str(tmp_path / f"{case}.safetensors")
    cfg = {"algo": algo, "linear_dim": dim, "linear_alpha": alpha, **kwargs}
    _, adapters = save_and_parse(net, path, cfg)
    names = lycoris_names(base)
    assert adapters, "no module parsed"
    for name, ad in adapters.items():
        assert ad.algo == (expect_algo or algo), (name, ad.algo)
    xs = make_inputs(base)
    mods_base = dict(base.named_modules())
    mods_live = dict(model.named_modules())
    worst = {"merged": 0.0, "bypass": 0.0, "merged_vs_bypass": 0.0, "bypass_tensor_m": 0.0}
    from lycoris.modules.tlora import clear_timestep_mask, set_timestep_mask
    for m in multipliers:
        net.set_multiplier(m)
        for mask in (masks or [None]):
            if mask is not None:
                set_timestep_mask(mask[None].clone())
            refs = reference(model, base, adapters, xs, m) if reference else None
            for name, ad in adapters.items():
                p = names[name]
                mb, x = mods_base[p], xs[p]
                ad.check_target(tuple(mb.weight.shape), p)
                if hasattr(ad, "mask"):
                    ad.mask = mask
                with torch.no_grad():
                    y_base = mb(x)
                    y_ref = refs[p] if refs else mods_live[p](x)
                    y_m = ours_merged(mb, ad, x, m)
                    spec = spec_for(mb)
                    y_b = ad.bypass(x, y_base, m, spec)
                    y_bt = ad.bypass(x, y_base, no_host(m), spec).as_subclass(torch.Tensor)
                worst["merged"] = max(worst["merged"], ratio(y_m, y_ref, y_base))
                worst["bypass"] = max(worst["bypass"], ratio(y_b, y_ref, y_base))
                worst["merged_vs_bypass"] = max(worst["merged_vs_bypass"], ratio(y_b, y_m, y_base))
                worst["bypass_tensor_m"] = max(worst["bypass_tensor_m"], ratio(y_bt, y_b, y_base))
            clear_timestep_mask()
    WORST[case] = max(worst.values())
    for kind, value in worst.items():
        assert value <= BOUND, f"{case}: {kind} ratio {value:.3g} > {BOUND}"
    return worst
