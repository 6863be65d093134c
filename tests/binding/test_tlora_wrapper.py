# SPDX-License-Identifier: GPL-3.0-or-later
"""T-LoRA in ComfyUI (issue 5): sigma -> SimpleTuner timestep with ComfyUI's own model_sampling objects, the
APPLY_MODEL wrapper (no host sync, one buffer per schedule, one schedule per model), KSampler / KSamplerAdvanced /
SamplerCustom, defaults from the file and the UI text, the SVD base (row slice of a fused qkv, disk cache,
quantized warning), merged refusal, the node's contract and its schedule picture."""
from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import sys

import pytest
import torch

from lyco_testkit.lycoris_files import config_for, make_lycoris

R8 = 8


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tl(binding):
    return binding("tlora")


@pytest.fixture(scope="module")
def flux2(get_twin, tmp_path_factory):
    """(twin, artifact) of a SimpleTuner-style T-LoRA (linear_dim 8, min 1, alpha 1) on the Flux 2 twin."""
    twin = get_twin("flux2")
    d = tmp_path_factory.mktemp("tlora_flux2")
    art = make_lycoris(twin.pristine_diffusers_model(), d / "tlora.safetensors", config_for("tlora", "flux2"),
                       seed=3, weight_std=0.2)
    return twin, art


def _load(binding, twin, path, mode="auto", strength=1.0):
    patched, report = binding("apply").apply_lycoris(twin.fresh_comfy_patcher(), str(path), strength, mode)
    assert report.unmatched == [], report.text()
    return patched, report


def _record(patched):
    recs = [r for r in patched.attachments["lycoris"] if r.schedule is not None]
    assert len(recs) == 1
    return recs[0]


def _ranks(buf) -> int:
    return int(buf.sum())


# --------------------------------------------------------------------------------------- sigma -> timestep
def _ms(model_type, **params):
    import comfy.model_base
    ms = comfy.model_base.model_sampling(None, getattr(comfy.model_base.ModelType, model_type))
    if params:
        ms.set_parameters(**params)
    return ms


def _rank_via_buffer(tl, ms, sigma, max_rank=R8, min_rank=1, alpha=1.0) -> int:
    sched = tl.TLoraSchedule(max_rank, min_rank, alpha)
    sched.update(tl.model_timestep(ms, torch.as_tensor(sigma, dtype=torch.float32)), "cpu", torch.float32)
    return _ranks(sched.buffer("cpu", torch.float32))


def test_flux_sigma_reference_vector(tl):
    """ModelSamplingFlux (Flux, Flux 2): t = int(1000·sigma); the reference's second vector -> 1, 1, 2, 4."""
    ms = _ms("FLUX")
    sig = torch.tensor([1.0, 0.9045, 0.7595, 0.5128])
    assert tl.model_timestep(ms, sig).tolist() == [1000.0, 904.0, 759.0, 512.0]
    assert [_rank_via_buffer(tl, ms, s) for s in sig] == [1, 1, 2, 4]
    # The pitfall (landscape.md): ModelSamplingFlux.timestep(sigma) is sigma itself, which would give full rank.
    assert torch.equal(ms.timestep(sig), sig)
    assert [_rank_via_buffer(tl, ms, 0.0) for _ in sig] == [R8] * 4


def test_flux_shifted_sigma_as_comfy_passes_it(tl):
    """The sigma ComfyUI passes is already shifted (Flux 2 shift 2.02): t is 1000 times that, not the unshifted t."""
    ms = _ms("FLUX", shift=2.02)
    sig = ms.sigma(torch.tensor([0.25, 0.5, 0.75]))  # ComfyUI's shifted sigmas for those fractions
    assert torch.all(sig > torch.tensor([0.25, 0.5, 0.75]))
    t = tl.model_timestep(ms, sig)
    assert torch.equal(t, torch.floor(sig * 1000))
    sched = tl.TLoraSchedule(64, 1, 1.0)
    for s in sig:
        sched.update(tl.model_timestep(ms, s), "cpu", torch.float32)
        from lycoris.modules.tlora import compute_timestep_mask
        assert torch.equal(sched.buffer("cpu", torch.float32),
                           compute_timestep_mask(int(float(s) * 1000), 1000, 64, 1, 1.0)[0])


def test_sd3_discrete_flow(tl):
    """ModelSamplingDiscreteFlow (SD3, AuraFlow...): its own timestep is 1000·sigma; ours agrees (floored)."""
    ms = _ms("FLOW", shift=3.0)
    sig = ms.sigma(torch.tensor([100.0, 500.0, 900.0, 999.0]))
    assert torch.equal(tl.model_timestep(ms, sig), torch.floor(ms.timestep(sig).float()))
    assert torch.equal(tl.model_timestep(ms, sig), torch.floor(sig * 1000))


def test_sdxl_discrete_index(tl):
    """ModelSamplingDiscrete (SD1.x, SDXL, eps): the nearest integer training index."""
    import comfy.samplers
    ms = _ms("EPS")
    idx = torch.tensor([0, 1, 250, 500, 750, 998, 999])
    t = tl.model_timestep(ms, ms.sigmas[idx])
    assert t.dtype == torch.float32 and t.tolist() == idx.float().tolist()
    # off-grid sigma (log-midpoint of 500 and 501, nudged): the nearest index in log sigma
    lo, hi = ms.log_sigmas[500], ms.log_sigmas[501]
    assert tl.model_timestep(ms, torch.exp(lo + 0.4 * (hi - lo)).reshape(1)).item() == 500
    assert tl.model_timestep(ms, torch.exp(lo + 0.6 * (hi - lo)).reshape(1)).item() == 501
    # a real 'normal' schedule: 999, 500, 0 (comfyui-host.md §5.4) -> ranks 1, 4, 8 at R=8
    sig = comfy.samplers.calculate_sigmas(ms, "normal", 3)[:-1]
    assert tl.model_timestep(ms, sig).tolist() == [999.0, 500.0, 0.0]
    assert [_rank_via_buffer(tl, ms, s) for s in sig] == [1, 4, 8]


def test_timestep_truncated_like_simpletuner(tl):
    """SimpleTuner passes int(t): at sigma 0.9845 (t 984.5) R=64 gives rank 2 (t=984), not 1 (t=984.5); the
    product is fp32 like diffusers' timesteps (sigma 0.7 -> 700, not 699)."""
    from lycoris.modules.tlora import compute_timestep_mask
    ms = _ms("FLUX")
    assert _rank_via_buffer(tl, ms, 0.9845, 64) == 2 == int(compute_timestep_mask(984, 1000, 64, 1, 1.0).sum())
    assert tl.model_timestep(ms, torch.tensor([0.7])).item() == 700.0


# ------------------------------------------------------------------------------------------------ wrapper
class _HostReadGuard:
    """Tensor.item / bool / float / int / tolist / numpy raise when called directly from the pack's code."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist", "numpy")

    def __init__(self, pack_dir: str):
        root = os.path.realpath(pack_dir)
        self.dirs = tuple(os.path.join(root, d) + os.sep for d in ("lycoris_comfy", "lycoris_core", "nodes"))
        self.saved = {}
        self.hits = []

    def __enter__(self):
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)
            self.saved[name] = real

            def guarded(t, *a, _real=real, _name=name, **k):
                caller = os.path.realpath(sys._getframe(1).f_code.co_filename)
                if caller.startswith(self.dirs):
                    self.hits.append(f"{_name} from {caller}:{sys._getframe(1).f_lineno}")
                return _real(t, *a, **k)
            setattr(torch.Tensor, name, guarded)
        return self

    def __exit__(self, *exc):
        for name, real in self.saved.items():
            setattr(torch.Tensor, name, real)


def _sync_ops(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero")
    counts = {n: 0 for n in names}
    for ev in prof.events():
        if ev.name in counts:
            counts[ev.name] += 1
    return counts


def test_wrapper_per_call_path_has_no_host_sync(binding, pack, tl, flux2, monkeypatch):
    """The device path (what runs on GPU): no .item()/bool()/int()/tolist() from the pack during sampling once
    the bases are prepared, and the profiler sees no more scalar reads (aten::_local_scalar_dense) in a T-LoRA run
    than in a run of the bare model. On CPU the adapter may read the mask on the host to skip inactive ranks
    (`host_rank_slicing`, no device sync exists there): switched off here, then checked to change nothing but
    those reads."""
    tlora_cls = importlib.import_module(f"{pack.__name__}.lycoris_core.adapters.tlora").TLoRAAdapter
    monkeypatch.setattr(tlora_cls, "host_rank_slicing", False)
    twin, art = flux2
    patched, _ = _load(binding, twin, art.path)
    inputs = twin.make_inputs(0, sigma=0.6)
    twin.run_comfy(patched, inputs)  # warm-up: SVD bases, factor caches, buffers
    pack_dir = os.path.dirname(os.path.dirname(tl.__file__))
    with _HostReadGuard(pack_dir) as guard:
        dense = twin.run_comfy(patched, twin.make_inputs(1, sigma=0.3))
    assert guard.hits == []
    base = twin.fresh_comfy_patcher()
    twin.run_comfy(base, inputs)
    with_tlora = _sync_ops(lambda: twin.run_comfy(patched, inputs))
    bare = _sync_ops(lambda: twin.run_comfy(base, inputs))
    assert with_tlora == bare, (with_tlora, bare)

    monkeypatch.setattr(tlora_cls, "host_rank_slicing", True)
    with _HostReadGuard(pack_dir) as guard:
        sliced = twin.run_comfy(patched, twin.make_inputs(1, sigma=0.3))
    assert guard.hits and all("lycoris_core/adapters/tlora.py" in h for h in guard.hits), guard.hits
    torch.testing.assert_close(sliced, dense, rtol=1e-5, atol=1e-6)


def test_wrapper_alone_no_sync_no_h2d(tl):
    """The wrapper body (timestep, rank, compare, copy_) on a stub model: zero scalar reads."""
    ms = _ms("FLUX")
    sched = tl.TLoraSchedule(R8, 1, 1.0)

    class _Model:
        model_sampling = ms
        manual_cast_dtype = None

        def get_dtype(self):
            return torch.float32

    class _Exec:
        class_obj = _Model()

        def __call__(self, x, t, *a, **k):
            return x

    x = torch.zeros(2, 4, 2, 2)
    sched.apply_model_wrapper(_Exec(), x, torch.tensor([0.5, 0.5]))
    buf = sched.buffer("cpu", torch.float32)
    ptr = buf.data_ptr()
    counts = _sync_ops(lambda: [sched.apply_model_wrapper(_Exec(), x, torch.tensor([s, s])) for s in (0.9, 0.2)])
    assert sum(counts.values()) == 0, counts
    assert buf.data_ptr() == ptr and _ranks(buf) == 6  # t=200: floor(0.8·7)+1
    assert len(sched._buffers) == 1


def _mask_probe(patched, record):
    """Forward pre-hook on the diffusion model recording (timestep row 0, clone of every schedule buffer)."""
    calls = []

    def pre(_mod, args, kwargs):
        ts = args[1] if len(args) > 1 else kwargs["timesteps"]
        schedule = record.injection.schedule
        calls.append((ts.detach().float().clone(), args[0].shape[0],
                      {k: b.clone() for k, b in (schedule._buffers.items() if schedule else [])}))
    return patched.model.diffusion_model.register_forward_pre_hook(pre, with_kwargs=True), calls


def test_one_buffer_per_schedule_and_per_model(binding, flux2, tmp_path):
    """Two T-LoRA models (two loads, two fresh ModelPatchers) each get their own schedule and buffer; each
    schedule keeps one buffer; the hooks read their own schedule's buffer."""
    twin, art = flux2
    other = tmp_path / "copy.safetensors"
    shutil.copy(art.path, other)
    a, _ = _load(binding, twin, art.path)
    b, _ = _load(binding, twin, other)
    ra, rb = _record(a), _record(b)
    assert ra.schedule is not rb.schedule and ra.schedule.key != rb.schedule.key
    twin.run_comfy(a, twin.make_inputs(0, sigma=0.9))
    twin.run_comfy(b, twin.make_inputs(0, sigma=0.2))
    assert len(ra.schedule._buffers) == 1 and len(rb.schedule._buffers) == 1
    buf_a = ra.schedule.buffer("cpu", torch.float32)
    buf_b = rb.schedule.buffer("cpu", torch.float32)
    assert buf_a.data_ptr() != buf_b.data_ptr()
    assert (_ranks(buf_a), _ranks(buf_b)) == (1, 6)  # t=900: floor(0.1·7)+1; t=200: floor(0.8·7)+1
    for rec, buf in ((ra, buf_a), (rb, buf_b)):
        copies = [c for slices in rec.injection.targets.values() for s in slices for c in s._copies.values()]
        assert copies and all(c.mask is buf for c in copies)
    # the wrapper is keyed per schedule: each model carries only its own
    import comfy.patcher_extension as pe
    assert set(a.wrappers[pe.WrappersMP.APPLY_MODEL]) == {ra.schedule.key}
    assert set(b.wrappers[pe.WrappersMP.APPLY_MODEL]) == {rb.schedule.key}


# ------------------------------------------------------------------------------------------------ samplers
def _conds(twin, inputs):
    pos = twin.comfy_positive(inputs)
    neg = [[torch.zeros_like(inputs["context"]), dict(pos[0][1])]]
    return pos, neg


def _check_calls(calls, expect_min):
    from lycoris_core.tlora_schedule import active_rank
    assert len(calls) >= expect_min
    for ts, batch, bufs in calls:
        assert torch.all(ts == ts[0]), "cond and uncond rows share one sigma"
        t = float(torch.floor(ts[0].float() * 1000))  # flux2: the diffusion model gets sigma
        want = active_rank(t, R8)
        assert bufs and all(_ranks(b) == want for b in bufs.values()), (float(ts[0]), want)


def test_ksampler_ksampleradvanced_samplercustom(binding, pack, flux2):
    """The mask follows every model call of KSampler (cfg 2: cond+uncond batched), KSamplerAdvanced (heun, a
    multi-evaluation sampler, steps 1..3 of 4) and SamplerCustom (dpmpp_2s_ancestral with its own sigmas)."""
    import nodes
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    twin, art = flux2
    patched, _ = _load(binding, twin, art.path)
    record = _record(patched)
    inputs = twin.make_inputs(0)
    pos, neg = _conds(twin, inputs)
    latent = {"samples": torch.zeros_like(inputs["x"])}
    handle, calls = _mask_probe(patched, record)
    try:
        nodes.common_ksampler(patched, 1, 3, 2.0, "euler", "simple", pos, neg, latent)
        assert len(calls) == 3 and all(c[1] == 2 for c in calls)  # one batched call per step
        _check_calls(calls, 3)
        ranks_seen = {_ranks(next(iter(c[2].values()))) for c in calls}
        assert len(ranks_seen) >= 2, "the mask did not change across steps"

        calls.clear()
        nodes.KSamplerAdvanced().sample(patched, "enable", 2, 4, 1.0, "heun", "simple", pos, neg, latent, 1, 3,
                                        "disable")
        _check_calls(calls, 3)  # heun: 2 calls per step except the last

        calls.clear()
        ms = patched.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(ms, "simple", 3)
        sampler = comfy.samplers.sampler_object("dpmpp_2s_ancestral")
        SamplerCustom.execute(patched, True, 3, 1.0, pos, neg, sampler, sigmas, latent)
        _check_calls(calls, 4)
    finally:
        handle.remove()


def test_node_override_and_disable_through_ksampler(binding, pack, flux2):
    """TLoraSamplerWrapper overrides min_rank/alpha (the buffer follows) or disables the mask (all ranks)."""
    import nodes
    from lycoris_core.tlora_schedule import active_rank

    node = importlib.import_module(f"{pack.__name__}.nodes.tlora_node").TLoraSamplerWrapper
    twin, art = flux2
    patched, _ = _load(binding, twin, art.path)
    inputs = twin.make_inputs(0)
    pos, neg = _conds(twin, inputs)
    latent = {"samples": torch.zeros_like(inputs["x"])}

    out = node.execute(patched, 3, 2.0, True)
    model = out.args[0]
    rec = _record(model)
    assert (rec.injection.schedule.min_rank, rec.injection.schedule.alpha) == (3, 2.0)
    handle, calls = _mask_probe(model, rec)
    try:
        nodes.common_ksampler(model, 1, 3, 1.0, "euler", "simple", pos, neg, latent)
    finally:
        handle.remove()
    for ts, _b, bufs in calls:
        want = active_rank(float(torch.floor(ts[0] * 1000)), R8, 3, 2.0)
        assert all(_ranks(b) == want for b in bufs.values())
    # the loader's schedule on the input model is untouched
    assert (_record(patched).schedule.min_rank, _record(patched).schedule.alpha) == (1, 1.0)

    off = node.execute(patched, -1, 0.0, False).args[0]
    rec_off = _record(off)
    assert rec_off.injection.schedule is None
    import comfy.patcher_extension as pe
    assert not off.wrappers.get(pe.WrappersMP.APPLY_MODEL)
    twin.run_comfy(off, twin.make_inputs(0, sigma=0.95))
    copies = [c for sl in rec_off.injection.targets.values() for s in sl for c in s._copies.values()]
    assert copies and all(c.mask is None for c in copies)


# ------------------------------------------------------------------------------------------- defaults/text
def _resave(src, dst, metadata):
    from safetensors.torch import load_file, save_file
    save_file(load_file(str(src)), str(dst), metadata)


def test_defaults_from_metadata_sidecar_or_simpletuner(binding, get_twin, tmp_path):
    """Parameters from lycoris_config metadata, else lycoris_config.json beside the file, else SimpleTuner's
    defaults (max_rank from the module ranks); the node's text says which and from where."""
    cfg = binding("tlora_config")
    twin = get_twin("flux2")
    art = make_lycoris(twin.pristine_diffusers_model(), tmp_path / "meta" / "t.safetensors",
                       config_for("tlora", "flux2", tlora_min_rank=2, tlora_alpha=2.0), seed=5, weight_std=0.2)
    patched, report = _load(binding, twin, art.path)
    s = _record(patched).schedule
    assert (s.max_rank, s.min_rank, s.alpha) == (8, 2, 2.0)
    assert "max_rank 8" in report.text() and "min_rank 2" in report.text()
    _, text = cfg.configure_tlora(patched)
    assert "min_rank 2 (tlora_min_rank in the file's lycoris_config metadata)" in text, text
    assert "alpha 2 (tlora_alpha in the file's lycoris_config metadata)" in text, text
    assert "max_rank 8 (linear_dim in the file's lycoris_config metadata)" in text, text

    side_dir = tmp_path / "sidecar"
    side_dir.mkdir()
    _resave(art.path, side_dir / "t.safetensors", {})
    (side_dir / "lycoris_config.json").write_text(json.dumps({"algo": "tlora", "tlora_min_rank": 3,
                                                              "linear_dim": 8}))
    patched, _ = _load(binding, twin, side_dir / "t.safetensors")
    s = _record(patched).schedule
    assert (s.max_rank, s.min_rank, s.alpha) == (8, 3, 1.0)
    _, text = cfg.configure_tlora(patched)
    assert "min_rank 3 (tlora_min_rank in lycoris_config.json beside the file" in text, text
    assert "alpha 1 (SimpleTuner's default (not in the config))" in text, text

    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    _resave(art.path, bare_dir / "t.safetensors", {})
    patched, _ = _load(binding, twin, bare_dir / "t.safetensors")
    s = _record(patched).schedule
    assert (s.max_rank, s.min_rank, s.alpha) == (8, 1, 1.0)
    _, text = cfg.configure_tlora(patched, min_rank=2)
    assert "max_rank 8 (largest module rank in the file (linear_dim not in the config))" in text, text
    assert "min_rank 2 (from this node)" in text and "alpha 1 (SimpleTuner's default" in text, text


# ---------------------------------------------------------------------------------------------- SVD base
def _base_term(p0, q0, lam0, k):
    return (p0[:, :k].double() * lam0[:k].double()) @ q0[:k].double()


def test_base_is_svd_of_the_row_slice_of_fused_qkv(binding, flux2):
    """A T-LoRA on Flux 2's to_q uses the SVD of its third of double_blocks.0.img_attn.qkv (rows 0..h), not of
    the whole fused weight; exact vs torch.linalg.svd (float64) for every mask cut."""
    twin, art = flux2
    patched, _ = _load(binding, twin, art.path)
    twin.run_comfy(patched, twin.make_inputs(0))
    rec = _record(patched)
    adapter, target = rec.adapters["lycoris_transformer_blocks_0_attn_to_q"]
    assert target.key == "diffusion_model.double_blocks.0.img_attn.qkv.weight" and target.offset is not None
    dim, start, length = target.offset
    assert (dim, start, length) == (0, 0, 64)
    qkv = twin.comfy_state_dict()["double_blocks.0.img_attn.qkv.weight"].double()
    rows = qkv[start:start + length]
    u, s, vh = torch.linalg.svd(rows, full_matrices=False)
    p0, q0, lam0 = adapter._shared["tlora_base"]
    for k in range(1, R8 + 1):
        want = (u[:, :k] * s[:k]) @ vh[:k]
        got = _base_term(p0, q0, lam0, k)
        assert float((got - want).abs().max()) <= 1e-5 * float(s[0]), k
    uf, sf, vhf = torch.linalg.svd(qkv, full_matrices=False)
    assert float((lam0.double() - sf[:R8]).abs().max()) > 1e-3  # not the SVD of the whole fused weight
    # ...and it is what LyCORIS computed at training (the diffusers to_q weight = that row slice)
    lyco = [m for m in art.network.loras if m.lora_name == "lycoris_transformer_blocks_0_attn_to_q"][0]
    torch.testing.assert_close(lam0, lyco.base_lambda.reshape(-1).float(), rtol=1e-5, atol=1e-6)


def test_base_cache_second_load_is_fast(binding, flux2, tmp_path, monkeypatch):
    """First preparation computes every base and writes the disk cache; after forgetting the process caches the
    second load reads them from disk (no SVD) and renders the same output."""
    bc = binding("tlora_base_cache")
    fc = binding("file_cache")
    twin, art = flux2
    path = tmp_path / "fresh.safetensors"
    shutil.copy(art.path, path)  # a new file signature: adapters without any base yet
    cache = tmp_path / "svd"
    monkeypatch.setenv("LYCORIS_TLORA_CACHE_DIR", str(cache))
    bc.clear_memory()
    inputs = twin.make_inputs(2)
    patched, _ = _load(binding, twin, path)
    first = bc.prepare_bases(patched)
    assert first["computed"] == first["slices"] > 0 and first["disk"] == 0
    assert len(list(cache.glob("*.safetensors"))) == first["computed"]
    again = bc.prepare_bases(patched)
    assert again["kept"] == again["slices"] and again["computed"] == 0
    out1 = twin.run_comfy(patched, inputs)

    fc.clear()
    bc.clear_memory()
    calls = []
    real = torch.linalg.eigh, torch.linalg.svd
    torch.linalg.eigh = lambda *a, **k: calls.append(1) or real[0](*a, **k)
    torch.linalg.svd = lambda *a, **k: calls.append(1) or real[1](*a, **k)
    try:
        patched2, _ = _load(binding, twin, path)
        second = bc.prepare_bases(patched2)
        out2 = twin.run_comfy(patched2, inputs)
    finally:
        torch.linalg.eigh, torch.linalg.svd = real
    assert second["disk"] == second["slices"] and second["computed"] == 0 and not calls
    assert torch.equal(out1, out2)
    print(f"\nT-LoRA bases flux2 twin: first {first['seconds']:.3f}s ({first['computed']} SVDs), "
          f"second load {second['seconds']:.3f}s (disk)")


def test_same_file_on_another_model_gets_that_models_base(binding, flux2, get_twin):
    """The parsed file (and its adapters) is cached per path: loading it on another model must not reuse the
    first model's SVD base."""
    twin, art = flux2
    other = get_twin("flux2", seed=1)
    pa, _ = _load(binding, twin, art.path)
    pb, _ = _load(binding, other, art.path)
    inputs = twin.make_inputs(0, sigma=0.5)
    ya = twin.run_comfy(pa, inputs)
    yb = other.run_comfy(pb, inputs)
    adapter = _record(pb).adapters["lycoris_transformer_blocks_0_attn_to_q"][0]
    rows = other.comfy_state_dict()["double_blocks.0.img_attn.qkv.weight"][:64].double()
    s = torch.linalg.svdvals(rows)
    torch.testing.assert_close(adapter._shared["tlora_base"][2].double(), s[:R8], rtol=1e-5, atol=1e-6)
    # and going back to model A restores A's base
    assert torch.equal(twin.run_comfy(pa, inputs), ya)
    assert not torch.equal(ya, yb)


def test_quantized_base_warns(binding, flux2, caplog):
    twin, art = flux2
    patched, _ = _load(binding, twin, art.path)
    qkv = patched.model.diffusion_model.double_blocks[0].img_attn.qkv
    qkv.weight.data = qkv.weight.data.to(torch.float8_e4m3fn)
    _, text = binding("tlora_config").configure_tlora(patched)
    assert "quantized" in text and "double_blocks.0.img_attn.qkv" in text
    with caplog.at_level(logging.WARNING):
        binding("tlora_base_cache").prepare_bases(patched, progress=False)
    assert any("quantized" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------- merged refusal
def test_merged_refused_auto_is_bypass(pack, binding, flux2):
    LycorisError = importlib.import_module(f"{pack.__name__}.lycoris_core.errors").LycorisError
    twin, art = flux2
    with pytest.raises(LycorisError, match=r"rank mask changes at every sampling step.*Use mode 'bypass'"):
        binding("apply").apply_lycoris(twin.fresh_comfy_patcher(), str(art.path), 1.0, "merged")
    _, report = _load(binding, twin, art.path, mode="auto")
    assert report.mode == "bypass"


# ------------------------------------------------------------------------------------------ node contract
def test_node_schema_and_schedule_image(pack, binding, flux2):
    import comfy.samplers
    node = importlib.import_module(f"{pack.__name__}.nodes.tlora_node").TLoraSamplerWrapper
    schema = node.define_schema()
    assert schema.node_id == "TLoraSamplerWrapper" and schema.display_name == "T-LoRA Sampler Wrapper"
    names = [i.id for i in schema.inputs]
    assert names[:4] == ["model", "min_rank", "tlora_alpha", "enabled"]
    assert names[4:] == ["sigmas"] and schema.inputs[4].optional
    assert [o.io_type for o in schema.outputs] == ["MODEL", "IMAGE"]

    twin, art = flux2
    patched, _ = _load(binding, twin, art.path)
    ms = patched.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", 10)
    out = node.execute(patched, -1, 0.0, True, sigmas)
    image = out.args[1]
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    cfg = binding("tlora_config")
    rows = binding("tlora").schedule_table(ms, sigmas, _record(out.args[0]).injection.schedule, R8)
    from lycoris_core.tlora_schedule import active_rank
    assert [r[3] for r in rows] == [active_rank(float(torch.floor(s * 1000)), R8) for s in sigmas[:-1]]
    assert rows[0][3] == 1 and rows[-1][3] > rows[0][3]
    # without sigmas: 20 default steps; disabled: all ranks
    default = cfg.schedule_image(out.args[0])
    assert default.shape[1:] == image.shape[1:]
    off = node.execute(patched, -1, 0.0, False).args[0]
    rows_off = binding("tlora").schedule_table(ms, sigmas, _record(off).injection.schedule, R8)
    assert {r[3] for r in rows_off} == {R8}
