# SPDX-License-Identifier: GPL-3.0-or-later
"""Tiny model files that ComfyUI's STOCK loaders detect (comfyui-host.md §9.3, §9.5), for server tests and
the demo. Generated at test time with a fixed seed, never downloaded or committed.

- ``diffusion_models/tiny_sd2.safetensors``  (UNETLoader; detected as SD20, EPS, context 1024; pairs with
  LotusConditioning), built with ComfyUI's own ``UNetModel``, fp16, 13.8 M params;
- ``diffusion_models/tiny_sd15.safetensors`` (UNETLoader; SD15, context 768), same recipe;
- ``vae/tiny_taesd4.safetensors`` / ``tiny_taesd16.safetensors`` / ``tiny_taesd128.safetensors``
  (VAELoader; TAESD with 4 / 16 / 128 latent channels: SD1/SD2, SD3/Flux, Flux 2).

The files are generated once into ``<host>/cache/<RECIPE_VERSION>/`` (git-ignored; bump the version when a
recipe changes) by a subprocess of the host Python, so this module stays stdlib-only for its callers, and are
symlinked into a server's models dir by :func:`write_server_models`. ``manifest.json`` there records, for each
tiny UNet, its unet_config and its diffusers module names (``down_blocks.0.attentions.0.proj_in`` ...), with the
ComfyUI key, the kohya/LyCORIS name (``lora_unet_down_blocks_0_attentions_0_proj_in``) and the weight shape, so
LyCORIS files can be made for it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import host

RECIPE_VERSION = "server-models-v1"
SEED = 20250101

TINY_SD2 = "tiny_sd2.safetensors"
TINY_SD15 = "tiny_sd15.safetensors"
TINY_TAESD4 = "tiny_taesd4.safetensors"
TINY_TAESD16 = "tiny_taesd16.safetensors"
TINY_TAESD128 = "tiny_taesd128.safetensors"

# file -> (models subfolder, what it is)
FILES = {
    TINY_SD2: ("diffusion_models", "unet"),
    TINY_SD15: ("diffusion_models", "unet"),
    TINY_TAESD4: ("vae", "taesd"),
    TINY_TAESD16: ("vae", "taesd"),
    TINY_TAESD128: ("vae", "taesd"),
}

_UNET_COMMON = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                    channel_mult=[1], transformer_depth=[1], transformer_depth_output=[0, 0],
                    transformer_depth_middle=-2, use_spatial_transformer=True, legacy=False,
                    adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False)
UNET_RECIPES = {
    TINY_SD2: dict(family="sd2", detected_as="SD20", latent_vae=TINY_TAESD4,
                   config=dict(_UNET_COMMON, context_dim=1024, use_linear_in_transformer=True,
                               num_heads=-1, num_head_channels=64)),
    TINY_SD15: dict(family="sd15", detected_as="SD15", latent_vae=TINY_TAESD4,
                    config=dict(_UNET_COMMON, context_dim=768, use_linear_in_transformer=False,
                                num_heads=8, num_head_channels=-1)),
}
TAESD_RECIPES = {TINY_TAESD4: 4, TINY_TAESD16: 16, TINY_TAESD128: 128}


# ------------------------------------------------------------------------------------------- public API
def cache_path() -> Path:
    return host.cache_dir() / RECIPE_VERSION


def ensure_cache(timeout: float = 300.0) -> Path:
    """Generate the files into the cache unless already there; returns the cache folder. Generation runs in
    a host-Python subprocess (torch + ComfyUI, ≈ 5-10 s) and is published atomically (rename), so parallel
    sessions never see half-written files."""
    final = cache_path()
    if (final / "manifest.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=RECIPE_VERSION + ".tmp.", dir=final.parent))
    code = ("import sys; sys.path.append(sys.argv[1]); "
            "from lyco_testkit import server_models as m; m.generate(sys.argv[2])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        res = subprocess.run([host.host_python(), "-c", code, str(host.TESTS_DIR), str(tmp)], env=env,
                             capture_output=True, text=True, timeout=timeout, cwd=str(tmp))
        if res.returncode != 0:
            raise RuntimeError(f"tiny model generation failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                               f"{res.stderr[-6000:]}")
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def manifest() -> dict:
    """The cache's manifest (generating the cache if needed)."""
    return json.loads((ensure_cache() / "manifest.json").read_text())


def write_server_models(models_dir: str | os.PathLike) -> dict:
    """Put every tiny file into ``models_dir/<folder>/`` (symlinks into the cache; a copy where symlinks
    fail) and return the manifest. Idempotent."""
    cache = ensure_cache()
    models_dir = Path(models_dir)
    for name, (folder, _) in FILES.items():
        dst = models_dir / folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        try:
            dst.symlink_to(cache / name)
        except OSError:
            shutil.copyfile(cache / name, dst)
    return manifest()


# ------------------------------------------------------------------------------ generation (host Python)
def _fill(sd: dict, std: float, one_d_ones: bool, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(sd):
        t = sd[key]
        if key.endswith("bias"):
            v = torch.zeros(t.shape)
        elif t.ndim <= 1:
            v = torch.ones(t.shape) if one_d_ones else torch.zeros(t.shape)
        else:
            v = torch.randn(t.shape, generator=g) * std
        out[key] = v
    return out


def _unet_modules(unet_config: dict, sd: dict) -> dict:
    import comfy.utils

    modules = {}
    for diff_key, comfy_key in sorted(comfy.utils.unet_to_diffusers(unet_config).items()):
        if not diff_key.endswith(".weight") or comfy_key not in sd:
            continue
        name = diff_key[: -len(".weight")]
        modules[name] = {"comfy_key": comfy_key, "lora_name": "lora_unet_" + name.replace(".", "_"),
                         "shape": list(sd[comfy_key].shape)}
    return modules


def generate(out_dir: str) -> None:
    """Write every file of the recipe and manifest.json into ``out_dir`` (run inside the host Python)."""
    import_start = time.monotonic()
    host.import_comfy(cpu=True)
    import torch
    import safetensors.torch
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD

    out = Path(out_dir)
    man = {"recipe_version": RECIPE_VERSION, "seed": SEED, "torch": torch.__version__, "files": {},
           "unets": {}, "vaes": {}}
    for i, (name, recipe) in enumerate(UNET_RECIPES.items()):
        cfg = dict(recipe["config"])
        with torch.device("meta"):
            model = UNetModel(**cfg, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)
        shapes = {k: v for k, v in model.state_dict().items()}
        sd = _fill(shapes, 0.02, True, SEED + i)
        sd = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
        safetensors.torch.save_file(sd, str(out / name))
        man["unets"][name] = {
            "family": recipe["family"], "detected_as": recipe["detected_as"], "vae": recipe["latent_vae"],
            "unet_config": cfg, "params": sum(v.numel() for v in sd.values()),
            "modules": _unet_modules(cfg, sd),
        }
    for j, (name, channels) in enumerate(TAESD_RECIPES.items()):
        vae = TAESD(latent_channels=channels)
        sd = {k: v for k, v in vae.state_dict().items() if k.startswith("taesd_")}
        sd = _fill(sd, 0.05, False, SEED + 100 + j)
        sd["vae_scale"] = torch.tensor(1.0)
        sd["vae_shift"] = torch.tensor(0.0)
        sd = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
        safetensors.torch.save_file(sd, str(out / name))
        man["vaes"][name] = {"latent_channels": channels, "params": sum(v.numel() for v in sd.values())}
    for name, (folder, kind) in FILES.items():
        man["files"][name] = {"folder": folder, "kind": kind, "bytes": (out / name).stat().st_size}
    man["generate_seconds"] = round(time.monotonic() - import_start, 2)
    (out / "manifest.json").write_text(json.dumps(man, indent=1))


if __name__ == "__main__":  # python -m lyco_testkit.server_models  (from tests/): print the manifest summary
    m = manifest()
    print(json.dumps({k: v for k, v in m.items() if k != "unets"}, indent=1))
    for name, u in m["unets"].items():
        print(name, u["detected_as"], u["params"], "params,", len(u["modules"]), "modules")
    sys.exit(0)
