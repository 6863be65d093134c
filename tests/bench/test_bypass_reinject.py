# SPDX-License-Identifier: GPL-3.0-or-later
"""Bypass hooks keep their layer specs (and the adapters' W-derived caches, e.g. DoRA norms) across re-injections
(an optimisation from the benchmarks), but rebuild them when the module's weight changed underneath: a merged
LoRA stacked below a bypass DoRA, at a new strength, must give the same output as a fresh load."""
from __future__ import annotations

import contextlib

import pytest
import torch


@pytest.fixture(scope="module")
def env(binding, tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("lycoris")
    from lyco_testkit import twins
    from lyco_testkit.lycoris_files import config_for, make_lycoris

    twin = twins.build_twin("flux2")
    d = tmp_path_factory.mktemp("reinject")
    files = {name: str(make_lycoris(twin.pristine_diffusers_model(), d / f"{name}.safetensors",
                                    config_for(algo, "flux2"), seed=5, weight_std=0.2).path)
             for name, algo in (("lora", "locon"), ("dora", "dora"))}
    return twin, files, binding("apply"), binding("strength"), binding("bypass")


@pytest.mark.parametrize("inference", [False, True], ids=["grad-mode", "inference-mode"])
def test_reinject_reuses_specs_and_rebuilds_after_weight_change(env, monkeypatch, inference):
    """inference-mode: the model is built under torch.inference_mode, as ComfyUI's loaders do; its weights are
    inference tensors, which have no in-place version counter (CI failure of a8d06f3)."""
    twin, files, apply, strength, bypass = env
    builds = []
    real = bypass._ModuleHook.build_entries
    monkeypatch.setattr(bypass._ModuleHook, "build_entries",
                        staticmethod(lambda m, s: builds.append(1) or real(m, s)))
    mode = torch.inference_mode() if inference else contextlib.nullcontext()
    with mode:  # ComfyUI builds, patches and runs models under torch.inference_mode
        _check_reinject(twin, files, apply, strength, builds, inference)


def _check_reinject(twin, files, apply, strength, builds, inference):
    base = twin.fresh_comfy_patcher()
    assert next(base.model.parameters()).is_inference() == inference
    alone, _ = apply.apply_lycoris(base, files["dora"], 0.8, "bypass")  # on unpatched base weights
    alone_first = twin.run_comfy(alone, inputs := twin.make_inputs(0))
    n = len(builds)
    torch.testing.assert_close(twin.run_comfy(alone, inputs), alone_first, rtol=0, atol=0)
    assert len(builds) == n
    merged, _ = apply.apply_lycoris(base, files["lora"], 1.0, "merged")
    both, _ = apply.apply_lycoris(merged, files["dora"], 0.8, "bypass")
    first = twin.run_comfy(both, inputs)
    assert len(builds) > n  # the merged LoRA below: new weights
    n = len(builds)
    again = twin.run_comfy(both, inputs)  # re-injected on the same weights: specs reused
    assert len(builds) == n
    torch.testing.assert_close(again, first, rtol=0, atol=0)

    # the merged LoRA below changes strength: the weights under the DoRA change, its norms must follow
    changed = strength.set_strength(both, 0.3, name=files["lora"].rsplit("/", 1)[-1])
    out = twin.run_comfy(changed, inputs)
    assert len(builds) > n
    fresh_merged, _ = apply.apply_lycoris(twin.fresh_comfy_patcher(), files["lora"], 0.3, "merged")
    fresh, _ = apply.apply_lycoris(fresh_merged, files["dora"], 0.8, "bypass")
    want = twin.run_comfy(fresh, inputs)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert float((out - first).abs().max()) > 1e-4  # the LoRA strength change is visible
