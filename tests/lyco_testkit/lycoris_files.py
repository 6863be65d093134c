# SPDX-License-Identifier: GPL-3.0-or-later
"""LyCORIS files made the way SimpleTuner makes them, with every adapter tensor non-zero.

:func:`make_lycoris` follows SimpleTuner's ``trainer.py`` (lycoris-format.md §1.7) and ``save_hooks.py`` (§1.2-1.4):

1. ``multiplier = int(cfg.get("multiplier", 1))``, ``linear_dim = int(cfg.get("linear_dim", 4))``,
   ``linear_alpha = int(cfg.get("linear_alpha", 1))``, ``tlora_min_rank = int(..., 1)``,
   ``tlora_alpha = float(..., 1.0)``: read and DELETED from the kwargs (note the ``int()`` truncation);
2. ``LycorisNetwork.apply_preset(cfg["apply_preset"])`` when present (mutates class state: we reset it to the
   4.1.3 class defaults before every file, and restore it afterwards, so presets never leak between files);
3. ``create_lycoris(model, multiplier, linear_dim, linear_alpha, **rest)`` (``rest`` keeps ``apply_preset``,
   which create_lycoris ignores, like SimpleTuner), then ``network.apply_to()``;
4. every adapter parameter randomised with a seeded generator (LoRA ups, LoKr ``w2``, OFT blocks, IA3 weights... are
   zero at init; see :func:`randomize_network`);
5. ``network.save_weights(path, dtype, {"lycoris_config": json.dumps(config)})`` (checkpoint files store the whole
   config; ``final_save=True`` stores the config with the five keys of step 1 removed, like the end-of-training
   save).

The network is created on a DEEP COPY of the given model (``artifact.model``), so the caller's model stays
pristine and several files can be made from one twin without stacking adapters.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# LycorisNetwork class attributes that apply_preset (and create_lycoris's own preset="full") mutate, with their
# lycoris-lora 4.1.3 class-body defaults (lycoris/wrapper.py).
PRESET_CLASS_DEFAULTS = {
    "ENABLE_CONV": True,
    "TARGET_REPLACE_MODULE": ["Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm"],
    "TARGET_REPLACE_NAME": [],
    "LORA_PREFIX": "lycoris",
    "MODULE_ALGO_MAP": {},
    "NAME_ALGO_MAP": {},
    "USE_FNMATCH": False,
    "TARGET_EXCLUDE_NAME": [],
}

# ---------------------------------------------------------------------------------------- SimpleTuner-like configs
FLUX2_TARGETS = ["Flux2Attention", "Flux2FeedForward", "Flux2ParallelSelfAttention"]

# simpletuner/examples/flux2-klein-9b-i2i.lycoris-lokr/lycoris_config.json (also documentation/LYCORIS.md)
FLUX2_LOKR_CONFIG = {
    "bypass_mode": True,
    "algo": "lokr",
    "multiplier": 1.0,
    "full_matrix": True,
    "linear_dim": 10000,
    "linear_alpha": 1,
    "factor": 4,
    "apply_preset": {
        "target_module": list(FLUX2_TARGETS),
        "module_algo_map": {
            "Flux2FeedForward": {"factor": 4},
            "Flux2Attention": {"factor": 2},
            "Flux2ParallelSelfAttention": {"factor": 2},
        },
    },
}

# SimpleTuner's documented LoKr recipe (documentation/LYCORIS.md: linear_dim 10000, factor 16 / 8) on the UNet's
# attention only (SDXL's DEFAULT_LYCORIS_TARGET is ["Attention"]; diffusers' UNet attention class is `Attention`).
SDXL_ATTN_CONFIG = {
    "algo": "lokr",
    "multiplier": 1.0,
    "linear_dim": 10000,
    "linear_alpha": 1,
    "factor": 16,
    "apply_preset": {"target_module": ["Attention"], "module_algo_map": {"Attention": {"factor": 16}}},
}

# simpletuner/examples/lycoris_config.json verbatim (no linear_dim: SimpleTuner's int(cfg.get("linear_dim", 4)))
SDXL_ATTN_FF_CONFIG = {
    "algo": "lokr",
    "multiplier": 1.0,
    "full_matrix": True,
    "linear_alpha": 1,
    "factor": 16,
    "apply_preset": {
        "target_module": ["Attention", "FeedForward"],
        "module_algo_map": {"Attention": {"factor": 16}, "FeedForward": {"factor": 8}},
    },
}

# The same LoKr recipe on Flux.1. NOTE: the documented target ["Attention", "FeedForward"] matches only the
# FeedForwards on diffusers 0.42 (Flux attention is class `FluxAttention`; LyCORIS matches exact class names), and
# the single blocks have no FeedForward; targeting the block classes covers attention, MLPs and modulation linears.
FLUX1_CONFIG = {
    "algo": "lokr",
    "multiplier": 1.0,
    "linear_dim": 10000,
    "linear_alpha": 1,
    "factor": 16,
    "full_matrix": True,
    "apply_preset": {
        "target_module": ["FluxTransformerBlock", "FluxSingleTransformerBlock"],
        "module_algo_map": {"FluxTransformerBlock": {"factor": 16}, "FluxSingleTransformerBlock": {"factor": 8}},
    },
}

# Default targets of config_for() per family (conv layers included for the UNets: ResnetBlock2D)
FAMILY_TARGETS = {
    "flux2": {"target_module": list(FLUX2_TARGETS)},
    "flux1": {"target_module": ["FluxTransformerBlock", "FluxSingleTransformerBlock"]},
    "sdxl": {"target_module": ["Transformer2DModel", "ResnetBlock2D"]},
    "sd15": {"target_module": ["Transformer2DModel", "ResnetBlock2D"]},
}
# T-LoRA on k>1 convs is inconsistent in 4.1.3 (lycoris-format §4.3): Linear-only targets for the UNets
TLORA_TARGETS = {
    "flux2": FAMILY_TARGETS["flux2"],
    "flux1": FAMILY_TARGETS["flux1"],
    "sdxl": {"target_module": ["Attention", "FeedForward"]},
    "sd15": {"target_module": ["Attention", "FeedForward"]},
}

ALGOS = ("locon", "loha", "lokr", "dora", "glora", "ia3", "full", "diag-oft", "boft", "tlora")


def config_for(algo: str, family: str, **overrides) -> dict:
    """A SimpleTuner-style ``lycoris_config`` for ``algo`` on ``family``: ``linear_dim`` 8 / ``linear_alpha`` 4
    (so ``s = alpha/r = 0.5 != 1``), ``apply_preset`` = :data:`FAMILY_TARGETS` (T-LoRA: :data:`TLORA_TARGETS`).

    ``algo``: locon | loha | lokr (``factor`` 4; pass ``full_matrix=True`` / ``decompose_both=True`` /
    ``factor=...``) | dora (LoCon + ``dora_wd``, ``wd_on_output`` True unless overridden) | glora | ia3 | full |
    diag-oft (``constraint`` 0, ``rescaled`` False unless overridden) | boft | tlora (``tlora_min_rank`` 1,
    ``tlora_alpha`` 1.0). Overrides are merged last; an override of ``None`` removes the key
    (``apply_preset=None`` = LyCORIS's default targets: every Linear/Conv).
    """
    if family not in FAMILY_TARGETS:
        raise ValueError(f"unknown family {family!r}")
    a = algo.lower()
    cfg: dict = {"algo": a, "multiplier": 1.0, "linear_dim": 8, "linear_alpha": 4,
                 "apply_preset": copy.deepcopy(FAMILY_TARGETS[family])}
    if a in ("locon", "lora"):
        cfg["algo"] = "locon"
    elif a == "loha":
        pass
    elif a == "lokr":
        cfg["factor"] = 4
    elif a == "dora":
        cfg.update(algo="locon", dora_wd=True, wd_on_output=True)
    elif a == "glora":
        pass
    elif a == "ia3":
        pass
    elif a == "full":
        pass
    elif a in ("diag-oft", "oft"):
        cfg.update(algo="diag-oft", constraint=0.0, rescaled=False)
    elif a == "boft":
        cfg.update(constraint=0.0, rescaled=False)
        if family == "flux2":
            # BOFT needs out = b·2^k with an even block b <= linear_dim: the fused single-block projection has
            # 3h + 2·3h = 576 rows = 18·2^5 here (27648 = 54·2^9 on Klein 4B), so 8 raises ValueError
            cfg["linear_dim"] = 18
    elif a == "tlora":
        cfg.update(tlora_min_rank=1, tlora_alpha=1.0, apply_preset=copy.deepcopy(TLORA_TARGETS[family]))
    else:
        raise ValueError(f"unknown algo {algo!r}; expected one of {ALGOS}")
    for k, v in overrides.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = copy.deepcopy(v)
    return cfg


# ---------------------------------------------------------------------------------------------------- artifact
@dataclass
class LycorisArtifact:
    """A saved LyCORIS file and the live network it was saved from.

    ``network`` is applied (``apply_to``) on ``model`` (a deep copy of the model given to make_lycoris);
    ``module_names`` are the network's module names (``lycoris_<path with _>``), ``module_paths`` maps each to the
    diffusers module path; ``tlora`` is the mask schedule SimpleTuner would use (``max_rank`` = linear_dim,
    ``min_rank``, ``alpha``) or None; ``bypass`` whether the modules run in bypass mode.
    """

    network: Any
    model: torch.nn.Module
    config: dict
    path: Path
    module_names: list
    module_paths: dict
    metadata: dict
    dtype: torch.dtype
    bypass: bool
    tlora: dict | None = None
    family: str | None = None
    create_kwargs: dict = field(default_factory=dict)

    def state_dict_keys(self) -> set:
        return set(self.network.state_dict().keys())


@contextlib.contextmanager
def _no_tlora_gc():
    """TLoraModule's SVD init calls gc.collect() once per module (~0.5 s each with ComfyUI + diffusers loaded);
    it has no numerical effect, so it is stubbed out while the network is created."""
    import lycoris.modules.tlora as tl

    real = tl.gc
    tl.gc = types.SimpleNamespace(collect=lambda *a, **k: 0)
    try:
        yield
    finally:
        tl.gc = real


def _reset_preset_state(cls) -> None:
    for k, v in PRESET_CLASS_DEFAULTS.items():
        setattr(cls, k, copy.deepcopy(v))


def _snapshot_preset_state(cls) -> dict:
    return {k: copy.deepcopy(getattr(cls, k)) for k in PRESET_CLASS_DEFAULTS}


def randomize_network(network, seed: int = 0, weight_std: float = 0.05) -> None:
    """Give every adapter parameter seeded, non-zero values (in module order, so it is deterministic):

    - ``dora_scale`` / ``rescale`` (init: norms of W / ones): ``p·(1 + std·N)``;
    - T-LoRA ``q_layer`` / ``p_layer`` / ``lambda_layer`` (init: the SVD of W, which the frozen ``base_*`` buffers
      copy, so ΔW = 0): ``p + std·N``;
    - ``oft_blocks`` (init 0): ``0.2·std·N`` (small rotations);
    - LoHa ``hada_*`` factors: ``sqrt(std)·N``, so that the Hadamard product of two rank-r products is about as
      large as a LoRA's ``up@down``;
    - everything else (LoRA up/down, LoHa, LoKr factors, GLoRA, IA3, full ``diff``, ``scalar``...): ``std·N``.
    Buffers (``alpha``, ``on_input``, T-LoRA bases) are left as created."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in network.loras:
            for name, p in lora.named_parameters():
                leaf = name.split(".")[0]
                noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
                if leaf in ("dora_scale", "rescale"):
                    p.mul_(1.0 + weight_std * noise)
                elif leaf in ("q_layer", "p_layer", "lambda_layer"):
                    p.add_(weight_std * noise)
                elif leaf == "oft_blocks":
                    p.copy_(0.2 * weight_std * noise)
                elif leaf.startswith("hada_"):
                    p.copy_(weight_std ** 0.5 * noise)
                else:
                    p.copy_(weight_std * noise)


def make_lycoris(diffusers_model: torch.nn.Module, path, config: dict, *, seed: int = 0, weight_std: float = 0.05,
                 dtype: torch.dtype = torch.float32, final_save: bool = False,
                 family: str | None = None) -> LycorisArtifact:
    """Create, randomise, apply and save a LyCORIS network like SimpleTuner (module docstring).

    ``dtype`` is the save dtype; when it isn't fp32 the live network's parameters AND buffers are rounded through
    it (SimpleTuner moves the whole network to ``weight_dtype`` before training, §1.2/§1.5), so the live network and
    the file hold the same values while the oracle still computes in fp32.
    """
    from lycoris import create_lycoris
    from lycoris.wrapper import LycorisNetwork

    cfg = copy.deepcopy(config)
    kwargs = copy.deepcopy(config)
    multiplier = int(kwargs.pop("multiplier", 1))
    linear_dim = int(kwargs.pop("linear_dim", 4))
    linear_alpha = int(kwargs.pop("linear_alpha", 1))
    tlora_min_rank = int(kwargs.pop("tlora_min_rank", 1))
    tlora_alpha = float(kwargs.pop("tlora_alpha", 1.0))

    model = copy.deepcopy(diffusers_model)
    saved_state = _snapshot_preset_state(LycorisNetwork)
    _reset_preset_state(LycorisNetwork)
    try:
        if "apply_preset" in cfg and cfg["apply_preset"] is not None:
            LycorisNetwork.apply_preset(copy.deepcopy(cfg["apply_preset"]))
        with torch.random.fork_rng(devices=[]), _no_tlora_gc():
            torch.manual_seed(seed)  # kaiming inits inside create_lycoris (all overwritten below, but be tidy)
            network = create_lycoris(model, multiplier, linear_dim, linear_alpha, **kwargs)
    finally:
        for k, v in saved_state.items():
            setattr(LycorisNetwork, k, v)
    if not network.loras:
        raise ValueError(f"LyCORIS created no modules for config {config!r}")
    network.apply_to()
    network.requires_grad_(False)
    randomize_network(network, seed=seed, weight_std=weight_std)
    if dtype != torch.float32:
        with torch.no_grad():
            for t in list(network.parameters()) + list(network.buffers()):
                if t.is_floating_point():
                    t.copy_(t.to(dtype).to(t.dtype))

    meta_cfg = copy.deepcopy(cfg)
    if final_save:
        for k in ("multiplier", "linear_dim", "linear_alpha", "tlora_min_rank", "tlora_alpha"):
            meta_cfg.pop(k, None)
    metadata = {"lycoris_config": json.dumps(meta_cfg)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network.save_weights(os.fspath(path), dtype, dict(metadata))

    paths = {"lycoris_" + name.replace(".", "_"): name for name, _ in model.named_modules() if name}
    names = [lora.lora_name for lora in network.loras]
    algo = str(cfg.get("algo", "lora")).lower()
    tl = ({"max_rank": linear_dim, "min_rank": tlora_min_rank, "alpha": tlora_alpha} if algo == "tlora" else None)
    bypass = any(bool(getattr(lora, "bypass_mode", False)) for lora in network.loras)
    return LycorisArtifact(network=network, model=model, config=cfg, path=path, module_names=names,
                           module_paths={n: paths.get(n) for n in names}, metadata=metadata, dtype=dtype,
                           bypass=bypass, tlora=tl, family=family,
                           create_kwargs=dict(multiplier=multiplier, linear_dim=linear_dim,
                                              linear_alpha=linear_alpha, **kwargs))


def read_lycoris_file(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a saved file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    return load_file(os.fspath(path)), meta


def family_config(family: str) -> dict:
    """The SimpleTuner-like constant for ``family`` (flux2: the Klein LoKr example; flux1: FLUX1_CONFIG; sdxl:
    the documented Attention+FeedForward LoKr; sd15: an attention LoCon)."""
    return copy.deepcopy({
        "flux2": FLUX2_LOKR_CONFIG,
        "flux1": FLUX1_CONFIG,
        "sdxl": SDXL_ATTN_FF_CONFIG,
        "sd15": config_for("locon", "sd15", apply_preset={"target_module": ["Attention"]}),
    }[family])


def make_demo_lycoris(family: str, algo: str, path, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Deterministic file for the demo: the twin's diffusers model (``twins.build_diffusers_model(family, 0)``)
    with ``config_for(algo, family)``, or with :func:`family_config` when ``algo == "simpletuner"``."""
    from . import twins

    model = twins.build_diffusers_model(family, 0)
    cfg = family_config(family) if algo == "simpletuner" else config_for(algo, family)
    return make_lycoris(model, path, cfg, seed=seed, dtype=dtype, family=family)


__all__ = ["FLUX2_LOKR_CONFIG", "SDXL_ATTN_CONFIG", "SDXL_ATTN_FF_CONFIG", "FLUX1_CONFIG", "FAMILY_TARGETS",
           "TLORA_TARGETS", "ALGOS", "PRESET_CLASS_DEFAULTS", "LycorisArtifact", "config_for", "make_lycoris",
           "make_demo_lycoris", "randomize_network", "read_lycoris_file", "family_config"]
