# SPDX-License-Identifier: GPL-3.0-or-later
"""T-LoRA step overhead (issue 5): a T-LoRA rank r in bypass (mask written by the APPLY_MODEL wrapper at every
model call) vs a plain bypass LoRA of the same rank on the same modules, vs the bare model; plus host syncs and
allocations per step counted with the torch profiler.

    .host/venv/bin/python bench/bench_tlora.py            # CPU, Flux-2-shaped model hidden 1024, rank 64
    .host/venv/bin/python bench/bench_tlora.py --quick    # tiny smoke run (< 1 min)
    .host/venv/bin/python bench/bench_tlora.py --gpu      # CUDA bf16, hidden 3072, 64x64 latent; CUDA sync debug

Variants (all through ComfyUI's real sampling stack: CFGGuider -> wrappers -> BaseModel.apply_model ->
forward hooks): ``base`` (no adapter), ``lora`` (LyCORIS LoCon rank r, bypass), ``tlora`` (LyCORIS T-LoRA rank
r, bypass, the loader's default schedule: mask on; on CPU the adapter skips the inactive ranks after reading the
mask on the host), ``tlora_dense`` (the same with ``TLoRAAdapter.host_rank_slicing`` off: the sync-free path every
GPU takes, full rank-2r product with the mask multiplied in), ``tlora_off`` (the wrapper node's enabled=False: no
wrapper, all ranks). Files are made with lycoris-lora exactly as SimpleTuner does (``make_lycoris``), cached in
bench/results/cache/tlora.

Per variant, in rounds that alternate the variants (rotated order): the median time of one model call ("step";
the sampler makes one call per step at cfg 1) over ``--steps`` calls after a warm-up call (which prepares the
T-LoRA SVD bases), then one profiled call counting
- host syncs: ``aten::_local_scalar_dense`` / ``aten::item`` / ``aten::is_nonzero`` (CPU and GPU), and on CUDA
  ``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` / D2H and H2D memcpys, plus the warnings of
  ``torch.cuda.set_sync_debug_mode("warn")``;
- allocations: the profiler's positive ``[memory]`` events (CPU and CUDA allocator), and their bytes.
Ratios: tlora/lora step time, (tlora - lora)/(lora - base) adapter-cost ratio, extra syncs and allocations of
tlora over lora. JSON goes to bench/results/bench-tlora-<mode>-<time>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CACHE = RESULTS / "cache" / "tlora"

SIZES = {
    "cpu": dict(hidden=1024, heads=8, depth=1, depth_single=1, ctx=512, hw=(16, 16), rank=64, steps=6, rounds=3),
    "quick": dict(hidden=128, heads=2, depth=1, depth_single=1, ctx=64, hw=(4, 4), rank=8, steps=3, rounds=1),
    "gpu": dict(hidden=3072, heads=24, depth=2, depth_single=4, ctx=2048, hw=(64, 64), rank=64, steps=8,
                rounds=3),
}
TARGETS = ["Flux2Attention", "Flux2FeedForward", "Flux2ParallelSelfAttention"]
VARIANTS = ("base", "lora", "tlora", "tlora_dense", "tlora_off")


def _setup_imports():
    sys.path.insert(0, str(REPO / "tests"))
    from lyco_testkit import host
    host.import_comfy()
    pack = host.load_pack()
    import torch
    from lyco_testkit import convert, twins
    from lyco_testkit.lycoris_files import make_lycoris
    return pack, torch, twins, convert, make_lycoris


def _configs(sz, twins):
    import copy
    h, heads = sz["hidden"], sz["heads"]
    hd = h // heads
    axes = [hd // 4] * 4
    dcfg = dict(twins.FLUX2_DIFFUSERS_CONFIG, num_layers=sz["depth"], num_single_layers=sz["depth_single"],
                attention_head_dim=hd, num_attention_heads=heads, joint_attention_dim=sz["ctx"],
                axes_dims_rope=tuple(axes))
    ucfg = dict(copy.deepcopy(twins.FLUX2_UNET_CONFIG), axes_dim=axes, num_heads=heads, hidden_size=h,
                context_in_dim=sz["ctx"], depth=sz["depth"], depth_single_blocks=sz["depth_single"])
    return dcfg, ucfg


def build(sz, torch, twins, convert, device, dtype):
    """(diffusers model fp32 CPU, ComfyUI ModelPatcher with the same weights, x, positive, sigmas)."""
    import comfy.model_patcher
    import comfy.supported_models as sm
    import diffusers

    dcfg, ucfg = _configs(sz, twins)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dmodel = diffusers.Flux2Transformer2DModel(**dcfg)
    twins._seeded_init(dmodel, 0)
    dmodel = dmodel.eval().requires_grad_(False)
    csd = convert.flux2_diffusers_to_comfy(dmodel.state_dict(), ucfg["depth"], ucfg["depth_single_blocks"],
                                           ucfg["hidden_size"], ucfg["guidance_embed"])
    mc = sm.Flux2(ucfg)
    mc.set_inference_dtype(dtype, None)
    model = mc.get_model({}, "")
    missing, unexpected = model.diffusion_model.load_state_dict(csd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: {missing[:4]} {unexpected[:4]}")
    model = model.to(dtype).eval()
    model.diffusion_model.requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    h, w = sz["hw"]
    x = torch.randn((1, 128, h, w), generator=g)
    text = torch.randn((1, 16, sz["ctx"]), generator=g)
    ctx = torch.zeros((1, twins.FLUX2_TEXT_LEN, sz["ctx"]))
    ctx[:, -text.shape[1]:] = text
    positive = [[ctx, {"pooled_output": None}]]
    sigmas = [0.97] + [0.95 - 0.9 * i / max(sz["steps"] - 1, 1) for i in range(sz["steps"])]
    return dmodel, patcher, x, positive, sigmas


def make_files(dmodel, sz, make_lycoris, mode, log):
    CACHE.mkdir(parents=True, exist_ok=True)
    tag = f"{mode}-h{sz['hidden']}-d{sz['depth']}-{sz['depth_single']}-r{sz['rank']}"
    files = {}
    for name, algo in (("lora", "locon"), ("tlora", "tlora")):
        path = CACHE / f"{name}-{tag}.safetensors"
        if not path.exists():
            t0 = time.perf_counter()
            cfg = {"algo": algo, "multiplier": 1.0, "linear_dim": sz["rank"], "linear_alpha": sz["rank"] // 2,
                   "apply_preset": {"target_module": list(TARGETS)}}
            make_lycoris(dmodel, path, cfg, seed=3, weight_std=0.05)
            log(f"made {path.name} in {time.perf_counter() - t0:.1f}s")
        files[name] = str(path)
    return files


class StepTimer:
    """A KSAMPLER sampler function making one model call per sigma, timing each (device-synchronised)."""

    def __init__(self, torch, x, sigmas, device):
        self.torch, self.x, self.sigmas, self.device = torch, x, sigmas, device
        self.times: list[float] = []
        self.profile_at: int | None = None
        self.profiled = None

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def __call__(self, model, noise, sigmas, extra_args=None, callback=None, disable=None, **_):
        torch = self.torch
        x = self.x.to(noise.device)
        out = None
        for i, s in enumerate(self.sigmas):
            sig = torch.tensor([s], device=noise.device)
            self._sync()
            if i == self.profile_at:
                self.profiled = profile_call(torch, self.device, lambda: model(x, sig, **(extra_args or {})))
                continue
            t0 = time.perf_counter()
            out = model(x, sig, **(extra_args or {}))
            self._sync()
            self.times.append(time.perf_counter() - t0)
        return out if out is not None else x


def profile_call(torch, device, fn) -> dict:
    """Host syncs and allocations of one model call (torch profiler; CUDA sync debug mode on GPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    caught = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with profile(activities=acts, profile_memory=True, with_stack=True) as prof:
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
        caught = [str(x.message)[:120] for x in w if "synchroniz" in str(x.message).lower()]
    syncs = {"aten::_local_scalar_dense": 0, "aten::item": 0, "aten::is_nonzero": 0}
    cuda_sync = {"cudaStreamSynchronize": 0, "cudaDeviceSynchronize": 0, "cudaMemcpyAsync": 0, "HtoD": 0,
                 "DtoH": 0}
    allocs = {"cpu_allocs": 0, "cpu_bytes": 0, "device_allocs": 0, "device_bytes": 0, "ops": 0}
    sources: dict[str, int] = {}
    for ev in prof.events():
        name = ev.name
        if name in syncs:
            syncs[name] += 1
            frames, par = [], ev.cpu_parent
            while par is not None and len(frames) < 2:  # python frames recorded by with_stack
                if ".py(" in par.name and "torch/" not in par.name:
                    frames.append(par.name)
                par = par.cpu_parent
            key = " <- ".join(frames) or "?"
            sources[key] = sources.get(key, 0) + 1
        elif name in cuda_sync:
            cuda_sync[name] += 1
        elif "HtoD" in name:
            cuda_sync["HtoD"] += 1
        elif "DtoH" in name:
            cuda_sync["DtoH"] += 1
        if name != "[memory]":
            # allocations are attributed to the op that made them (its own, not its children's)
            cpu_b = getattr(ev, "self_cpu_memory_usage", 0) or 0
            dev_b = getattr(ev, "self_device_memory_usage", None)
            if dev_b is None:
                dev_b = getattr(ev, "self_cuda_memory_usage", 0) or 0
            if cpu_b > 0:
                allocs["cpu_allocs"] += 1
                allocs["cpu_bytes"] += cpu_b
            if dev_b > 0:
                allocs["device_allocs"] += 1
                allocs["device_bytes"] += dev_b
        if name.startswith("aten::"):
            allocs["ops"] += 1
    out = {"host_syncs": sum(syncs.values()), **syncs, **allocs, "sync_sources": sources}
    if device.type == "cuda":
        out.update(cuda_sync)
        out["sync_debug_warnings"] = len(caught)
        out["sync_debug_samples"] = caught[:3]
    return out


def patched_variant(pack, patcher, files, name, dtype_note=None):
    apply = importlib.import_module(f"{pack.__name__}.lycoris_comfy.apply").apply_lycoris
    cfg = importlib.import_module(f"{pack.__name__}.lycoris_comfy.tlora_config")
    if name == "base":
        return patcher.clone()
    p, report = apply(patcher, files["lora" if name == "lora" else "tlora"], 1.0, "bypass")
    if report.unmatched:
        raise RuntimeError(report.text())
    if name == "tlora_off":
        p, _ = cfg.configure_tlora(p, enabled=False)
    return p


def set_slicing(pack, name):
    """`tlora_dense` runs with TLoRAAdapter.host_rank_slicing off, every other variant with it on."""
    cls = importlib.import_module(f"{pack.__name__}.lycoris_core.adapters.tlora").TLoRAAdapter
    cls.host_rank_slicing = name != "tlora_dense"


def run_variant(torch, patched, x, positive, sigmas, device, profile_index=None):
    import comfy.samplers

    timer = StepTimer(torch, x, sigmas, device)
    timer.profile_at = profile_index
    guider = comfy.samplers.CFGGuider(patched)
    guider.inner_set_conds({"positive": positive})
    guider.set_cfg(1.0)
    zeros = torch.zeros_like(x)
    t0 = time.perf_counter()
    guider.sample(zeros, zeros, comfy.samplers.KSAMPLER(timer), torch.tensor([sigmas[0], 0.0]), seed=0,
                  disable_pbar=True)
    wall = time.perf_counter() - t0
    return timer, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    mode = "gpu" if args.gpu else ("quick" if args.quick else "cpu")
    sz = dict(SIZES[mode])
    for k in ("rounds", "steps", "rank"):
        if getattr(args, k):
            sz[k] = getattr(args, k)
    os.environ.setdefault("LYCORIS_TLORA_CACHE_DIR", str(CACHE / "svd"))
    logging.basicConfig(level=logging.WARNING)

    def log(msg):
        print(f"[bench_tlora {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    pack, torch, twins, convert, make_lycoris = _setup_imports()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu and not torch.cuda.is_available():
        log("--gpu: CUDA is not available")
        return 2
    device = torch.device("cuda" if args.gpu else "cpu")
    dtype = torch.bfloat16 if args.gpu else torch.float32
    if args.gpu:
        import comfy.model_management as mm
        mm.cpu_state = mm.CPUState.GPU  # the host kit imports comfy with --cpu; the bench wants the GPU
    log(f"mode {mode}: {sz}, device {device}, dtype {dtype}")
    t0 = time.perf_counter()
    dmodel, patcher, x, positive, sigmas = build(sz, torch, twins, convert, device, dtype)
    log(f"built model in {time.perf_counter() - t0:.1f}s "
        f"({sum(p.numel() for p in patcher.model.diffusion_model.parameters()) / 1e6:.1f} M params)")
    files = make_files(dmodel, sz, make_lycoris, mode, log)
    del dmodel
    variants = {name: patched_variant(pack, patcher, files, name) for name in VARIANTS}

    bc = importlib.import_module(f"{pack.__name__}.lycoris_comfy.tlora_base_cache")
    warm = {}
    for name, p in variants.items():  # warm-up: load, SVD bases (first time), factor caches, mask buffers
        set_slicing(pack, name)
        t0 = time.perf_counter()
        run_variant(torch, p, x, positive, sigmas[:1], device)
        warm[name] = time.perf_counter() - t0
        if name == "tlora":
            warm["tlora_bases"] = dict(bc.last_stats)
    log("warm-up (s): " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in warm.items()))

    times = {name: [] for name in VARIANTS}
    order = list(VARIANTS)
    for r in range(sz["rounds"]):
        for name in order:
            set_slicing(pack, name)
            timer, _ = run_variant(torch, variants[name], x, positive, sigmas, device)
            times[name].extend(timer.times[1:])  # the first call of each sample() also loads/prepares
        order = order[1:] + order[:1]
        log(f"round {r + 1}/{sz['rounds']}: " + ", ".join(f"{n} {statistics.median(times[n]) * 1e3:.1f} ms"
                                                           for n in VARIANTS))
    prof = {}
    for name in VARIANTS:
        set_slicing(pack, name)
        timer, _ = run_variant(torch, variants[name], x, positive, sigmas[:3], device, profile_index=2)
        prof[name] = timer.profiled
    med = {n: statistics.median(v) for n, v in times.items()}
    ratios = {
        "tlora_over_lora_step": med["tlora"] / med["lora"],
        "tlora_dense_over_lora_step": med["tlora_dense"] / med["lora"],
        "tlora_dense_adapter_cost_over_lora_adapter_cost": ((med["tlora_dense"] - med["base"])
                                                             / (med["lora"] - med["base"])
                                                             if med["lora"] > med["base"] else None),
        "tlora_off_over_lora_step": med["tlora_off"] / med["lora"],
        "tlora_over_base_step": med["tlora"] / med["base"],
        "lora_over_base_step": med["lora"] / med["base"],
        "tlora_adapter_cost_over_lora_adapter_cost": ((med["tlora"] - med["base"]) / (med["lora"] - med["base"])
                                                       if med["lora"] > med["base"] else None),
        "mask_cost_ms": (med["tlora_dense"] - med["tlora_off"]) * 1e3,
        "extra_host_syncs_tlora_vs_lora": prof["tlora"]["host_syncs"] - prof["lora"]["host_syncs"],
        "extra_host_syncs_tlora_dense_vs_base": prof["tlora_dense"]["host_syncs"] - prof["base"]["host_syncs"],
        "extra_host_syncs_tlora_vs_base": prof["tlora"]["host_syncs"] - prof["base"]["host_syncs"],
        "extra_allocs_tlora_vs_lora": (prof["tlora"]["cpu_allocs"] + prof["tlora"]["device_allocs"])
        - (prof["lora"]["cpu_allocs"] + prof["lora"]["device_allocs"]),
        "extra_allocs_tlora_dense_vs_lora": (prof["tlora_dense"]["cpu_allocs"]
                                             + prof["tlora_dense"]["device_allocs"])
        - (prof["lora"]["cpu_allocs"] + prof["lora"]["device_allocs"]),
        "extra_allocs_tlora_dense_vs_tlora_off": (prof["tlora_dense"]["cpu_allocs"]
                                                  + prof["tlora_dense"]["device_allocs"])
        - (prof["tlora_off"]["cpu_allocs"] + prof["tlora_off"]["device_allocs"]),
    }
    n_modules = sum(1 for r in variants["tlora"].attachments["lycoris"] for _ in r.adapters)
    print()
    print(f"T-LoRA bench ({mode}, {device}, {dtype}, hidden {sz['hidden']}, rank {sz['rank']}, "
          f"{n_modules} T-LoRA modules, {len(times['base'])} timed calls per variant)")
    dev_col = device.type == "cuda"
    print(f"{'variant':10s} {'median ms/step':>15s} {'host reads':>11s}" + (f" {'dev syncs':>10s}" if dev_col else "")
          + f" {'allocs':>8s} {'alloc MiB':>10s} {'aten ops':>9s}")
    for n in VARIANTS:
        p = prof[n]
        allocs = p["cpu_allocs"] + p["device_allocs"]
        mib = (p["cpu_bytes"] + p["device_bytes"]) / 2**20
        extra = ""
        if dev_col:
            dev_syncs = (p["cudaStreamSynchronize"] + p["cudaDeviceSynchronize"] + p["DtoH"]
                         + p["sync_debug_warnings"])
            extra = f" {dev_syncs:10d}"
        print(f"{n:10s} {med[n] * 1e3:15.2f} {p['host_syncs']:11d}{extra} {allocs:8d} {mib:10.1f} {p['ops']:9d}")
    print("host reads = aten::item/_local_scalar_dense/is_nonzero in one model call (on CPU a read, not a device "
          "sync; on CUDA each is a sync)" + ("; dev syncs = stream/device syncs + DtoH copies + sync-debug warnings"
                                            if dev_col else ""))
    print("ratios: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in ratios.items()))
    result = {"mode": mode, "device": str(device), "dtype": str(dtype), "size": sz, "median_step_s": med,
              "times_s": times, "profile": prof, "ratios": ratios, "warmup_s": warm, "modules": n_modules,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                          "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
              "when": _dt.datetime.now().isoformat(timespec="seconds")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"bench-tlora-{mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
