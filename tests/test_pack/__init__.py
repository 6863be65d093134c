# SPDX-License-Identifier: GPL-3.0-or-later
"""Test-only ComfyUI node pack (V1), linked into a test server as ``custom_nodes/lyco_test_pack``.

Never shipped. It lets API-format prompts use models ComfyUI's auto-detection cannot load tiny:

- ``LycoTestTinyModel``: an in-memory tiny Flux 2 / Flux 1 / SDXL / SD1.5 MODEL from
  ``lyco_testkit.twins.build_comfy_twin`` (auto-detection cannot load tiny Flux);
- ``LycoTestConditioning``: a CONDITIONING of a given shape filled from a seed (no text encoder needed); with
  its optional ``model`` input connected, the shape follows that model (context dim, pooled dim).

``lyco_testkit`` lives in the repo's ``tests/`` folder; it is imported lazily, inside execute, with ``tests/``
APPENDED to ``sys.path`` (after ComfyUI's root, so neither ``tests/server`` nor anything else there can
shadow a ComfyUI module).
"""
from __future__ import annotations

import os
import sys

# The repo's tests/ (through the custom_nodes symlink); env LYCO_TESTS_DIR points elsewhere (harness self-tests).
TESTS_DIR = os.environ.get("LYCO_TESTS_DIR") or os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
FAMILIES = ["flux2", "flux1", "sdxl", "sd15"]  # lyco_testkit.twins.FAMILIES (a server test checks they agree)
MAX_INT = 0xFFFFFFFF


def _testkit(module: str):
    if TESTS_DIR not in sys.path:
        sys.path.append(TESTS_DIR)
    import importlib

    return importlib.import_module(f"lyco_testkit.{module}")


class LycoTestTinyModel:
    """A tiny programmatic model (Flux 2, Flux 1, SDXL, SD1.5; comfyui-host.md §9.6) as a MODEL, built by
    lyco_testkit.twins with the same weights as its diffusers twin (so LyCORIS files made there apply)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (FAMILIES, {"default": FAMILIES[0]}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_INT}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "lyco_test"
    DESCRIPTION = "Test only: a tiny in-memory model of the given family (lyco_testkit.twins.build_comfy_twin)."

    def build(self, family, seed):
        twins = _testkit("twins")
        return (twins.build_comfy_twin(family, int(seed)),)


def conditioning_dims(model) -> tuple[int, int]:
    """(context dim, pooled dim; 0 = no pooled_output) that a ComfyUI MODEL expects."""
    import comfy.model_base

    base = model.model
    cfg = dict(base.model_config.unet_config)
    dim = cfg.get("context_in_dim") or cfg.get("context_dim")
    if not dim:
        dim = ((cfg.get("context_embedder_config") or {}).get("params") or {}).get("in_features")
    if "vec_in_dim" in cfg or isinstance(base, comfy.model_base.Flux):
        pooled = cfg.get("vec_in_dim") or 1  # Flux.encode_adm needs pooled_output even when unused
    elif isinstance(base, comfy.model_base.SDXL):  # adm = pooled + 6 size embeddings of 256
        pooled = int(cfg.get("adm_in_channels") or 2816) - 6 * 256
    else:
        pooled = cfg.get("adm_in_channels") or 0
    if not dim:
        raise ValueError(f"cannot tell the context dim of {type(base).__name__} from {sorted(cfg)}")
    return int(dim), int(pooled)


class LycoTestConditioning:
    """CONDITIONING ``[[randn(1, tokens, dim), {"pooled_output": randn(1, pooled_dim)}]]`` from a seed."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "tokens": ("INT", {"default": 8, "min": 1, "max": 4096}),
                "dim": ("INT", {"default": 1024, "min": 1, "max": 16384}),
                "pooled_dim": ("INT", {"default": 0, "min": 0, "max": 16384,
                                       "tooltip": "0: no pooled_output"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_INT}),
                "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}),
            },
            "optional": {
                "model": ("MODEL", {"tooltip": "if connected, dim and pooled_dim follow this model"}),
            },
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "lyco_test"
    DESCRIPTION = "Test only: seeded random conditioning, so samplers run without a text encoder."

    def make(self, tokens, dim, pooled_dim, seed, scale=1.0, model=None):
        import torch

        if model is not None:
            dim, pooled_dim = conditioning_dims(model)
        g = torch.Generator().manual_seed(int(seed))
        cond = torch.randn((1, int(tokens), int(dim)), generator=g) * scale
        extra = {}
        if pooled_dim:
            extra["pooled_output"] = torch.randn((1, int(pooled_dim)), generator=g) * scale
        return ([[cond, extra]],)


NODE_CLASS_MAPPINGS = {
    "LycoTestTinyModel": LycoTestTinyModel,
    "LycoTestConditioning": LycoTestConditioning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LycoTestTinyModel": "Tiny test model (lyco tests)",
    "LycoTestConditioning": "Random conditioning (lyco tests)",
}
