#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Demo: boot a real ComfyUI with this pack and run every shipped API workflow on tiny built-in models.

    .host/venv/bin/python scripts/demo.py [--only NAME ...] [--keep] [--timeout S]

1. installs the host (scripts/install-host.sh) if it is missing, and re-runs itself in the host venv;
2. boots ComfyUI (``lyco_testkit.server.ComfyServer``: the pack + the test pack, CPU, temp base dir);
3. writes the tiny models (``lyco_testkit.server_models``) into its models folder;
4. runs a built-in stock workflow (tiny SD2, a sanity check of the host), then every ``workflows/api/*.json``
   with real model names swapped for tiny ones (:func:`substitute_tiny_models`);
5. saves the images to ``output/demo/`` and prints a table; exits 1 if any workflow failed.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = Path(os.environ.get("LYCORIS_HOST_DIR") or REPO / ".host")
VENV_PY = HOST / "venv" / "bin" / "python"
WORKFLOWS = REPO / "workflows" / "api"
OUT = REPO / "output" / "demo"


# ------------------------------------------------------------------------------------------------ bootstrap
def ensure_host() -> None:
    """Install the host if missing; re-exec in its venv if this is another interpreter."""
    if not os.environ.get("COMFYUI_PATH") and not (HOST / ".stamps" / "comfyui").exists():
        print("[demo] host not installed: running scripts/install-host.sh (one-off, several minutes)", flush=True)
        subprocess.run(["bash", str(REPO / "scripts" / "install-host.sh")], check=True)
    if VENV_PY.exists() and Path(sys.prefix).resolve() != (HOST / "venv").resolve() \
            and not os.environ.get("LYCO_DEMO_NO_REEXEC"):
        os.environ["LYCO_DEMO_NO_REEXEC"] = "1"
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]])


def import_testkit():
    """Import ``tests/lyco_testkit`` by path (as the package ``lyco_testkit``), without putting ``tests/``
    or the repo root ahead of ComfyUI on sys.path."""
    if "lyco_testkit" not in sys.modules:
        pkg_dir = REPO / "tests" / "lyco_testkit"
        spec = importlib.util.spec_from_file_location("lyco_testkit", pkg_dir / "__init__.py",
                                                      submodule_search_locations=[str(pkg_dir)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["lyco_testkit"] = module
        spec.loader.exec_module(module)
    return sys.modules["lyco_testkit"]


# --------------------------------------------------------------------------------------------- substitution
class SkipWorkflow(Exception):
    """The workflow cannot run on tiny models here (reason in the message)."""


MODEL_LOADERS = {"UNETLoader": "unet_name", "UnetLoaderGGUF": "unet_name", "CheckpointLoaderSimple": "ckpt_name",
                 "CheckpointLoader": "ckpt_name", "ImageOnlyCheckpointLoader": "ckpt_name"}
CLIP_LOADERS = {"CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "QuadrupleCLIPLoader", "CLIPLoaderGGUF",
                "DualCLIPLoaderGGUF"}
ADAPTER_INPUTS = re.compile(r"(lora|lycoris|adapter)(_name)?$")
# file-name token -> lyco_testkit.lycoris_files algo (first match wins; see adapter_recipe)
ALGO_TOKENS = (("tlora", "tlora"), ("lokr", "lokr"), ("loha", "loha"), ("locon", "locon"), ("dora", "dora"),
               ("glora", "glora"), ("boft", "boft"), ("oft", "diag-oft"), ("ia3", "ia3"), ("full", "full"))
# families whose SimpleTuner recipe (lycoris_files.family_config) is a LoKr
LOKR_RECIPE_FAMILIES = ("flux2", "flux1", "sdxl")


TWIN_FAMILIES = ("flux2", "flux1", "sdxl", "sd15")  # LycoTestTinyModel / lyco_testkit.twins families


def model_family(name: str) -> str:
    """Family of a real checkpoint / diffusion-model file name: flux2, flux1, sdxl, sd15 or (default) sd2."""
    n = name.lower()
    if re.search(r"flux[ ._-]?2", n):
        return "flux2"
    if "flux" in n:
        return "flux1"
    if re.search(r"sd[ ._-]?xl", n):
        return "sdxl"
    if re.search(r"sd[ ._-]?1[ ._-]?5|v1-5", n):
        return "sd15"
    return "sd2"


def adapter_algo(name: str) -> str:
    """The LyCORIS algorithm a real adapter file name suggests (``simpletuner``: no algorithm in the name)."""
    n = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return next((algo for token, algo in ALGO_TOKENS if token in n), "simpletuner")


def adapter_recipe(name: str, family: str) -> str:
    """Which tiny LyCORIS file stands in for the real adapter ``name`` (sub-folders included) on ``family``.

    - ``sdxl-attn-lokr``: an SDXL LoKr named ``*attn*``/``*attention*`` (SimpleTuner's attention-only advice,
      ``lycoris_files.SDXL_ATTN_CONFIG``);
    - ``simpletuner``: a LoKr on Flux 2 / Flux.1 / SDXL, or no algorithm in the name (the family's SimpleTuner
      config, ``lycoris_files.family_config``: the Flux 2 Klein LoKr example, Flux.1's LoKr, SDXL's LoKr);
    - otherwise the algorithm from the name (``lycoris_files.config_for(algo, family)``; ``tlora``: T-LoRA).
    """
    algo = adapter_algo(name)
    n = re.sub(r"[^a-z0-9]", "", str(name).lower())
    if family == "sdxl" and algo == "lokr" and ("attn" in n or "attention" in n):
        return "sdxl-attn-lokr"
    if algo == "lokr" and family in LOKR_RECIPE_FAMILIES:
        return "simpletuner"
    return algo


def adapter_seed(name: str) -> int:
    """A stable per-name seed, so two different real files stand in as two different tiny files."""
    return int(hashlib.sha256(str(name).encode()).hexdigest()[:6], 16) % 100000


def tiny_adapter_name(name: str, family: str) -> str:
    """The generated file's name in models/loras: ``tiny_<family>__<real stem>.safetensors``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).stem).strip("._") or "adapter"
    return f"tiny_{family}__{stem}.safetensors"


def substitute_tiny_models(prompt: dict, tiny: dict, make_adapter) -> tuple[dict, list[str]]:
    """Rewrite an API-format prompt (a copy is returned) to run on tiny built-in models.

    Substitution table (the family comes from the model file name, see :func:`model_family`):

    ==========================================  ===========================================================
    node                                        becomes
    ==========================================  ===========================================================
    UNETLoader / CheckpointLoader* of a Flux 2, ``LycoTestTinyModel(family)``, the test pack's twin (same weights
    Flux 1, SDXL or SD1.5 file                   as the diffusers twin LyCORIS files are made on); a
                                                 checkpoint's VAE output is rewired to a new VAELoader
    UNETLoader / CheckpointLoader* (others)     stock ``UNETLoader(tiny_sd2)``
    CLIPTextEncode*                             ``LycoTestConditioning`` shaped by the model (CLIP loaders
                                                 left unused are dropped)
    LoraLoader                                  ``LoraLoaderModelOnly`` (no CLIP any more)
    VAELoader                                   tiny TAESD of the family's latent channels
    Empty*LatentImage                           64×64, batch 1
    any ``steps`` input                         at most 4
    ``*lora_name`` / ``*lycoris_name`` inputs   ``make_adapter(family, real_name)`` → a generated file name
                                                 (the same real name always maps to the same file, so a
                                                 ``LycorisStrength.lycoris_name`` follows its loader)
    SaveImage ``filename_prefix``               ``demo/<prefix>``
    ==========================================  ===========================================================

    ``tiny`` maps ``"unet:<family>"`` and ``"vae:<family>"`` to file names. ``make_adapter`` returns a name in
    ``models/loras`` or raises SkipWorkflow. Returns ``(prompt, notes)``; raises SkipWorkflow when the prompt is
    not in API format or cannot be mapped.
    """
    if not isinstance(prompt, dict) or not prompt or not all(
            isinstance(n, dict) and "class_type" in n for n in prompt.values()):
        raise SkipWorkflow("not an API-format prompt (UI-format files belong in workflows/, not workflows/api/)")
    g = json.loads(json.dumps(prompt))
    notes: list[str] = []
    next_id = max([int(k) for k in g if str(k).isdigit()] + [0]) + 1
    family, model_src = None, None

    for nid, node in list(g.items()):  # 1. model loaders
        ct, inp = node["class_type"], node.setdefault("inputs", {})
        if ct not in MODEL_LOADERS:
            continue
        real = str(inp.get(MODEL_LOADERS[ct], ""))
        fam = model_family(real)
        family, model_src = family or fam, model_src or nid
        if fam in TWIN_FAMILIES:
            g[nid] = {"class_type": "LycoTestTinyModel", "inputs": {"family": fam, "seed": 0},
                      "_meta": node.get("_meta", {})}
        else:
            g[nid] = {"class_type": "UNETLoader", "inputs": {"unet_name": tiny[f"unet:{fam}"],
                                                              "weight_dtype": "default"}, "_meta": node.get("_meta", {})}
        notes.append(f"{nid} {ct}({real}) -> {g[nid]['class_type']}({fam})")
        if ct.startswith("CheckpointLoader") or ct == "ImageOnlyCheckpointLoader":
            vae_id = str(next_id)
            next_id += 1
            g[vae_id] = {"class_type": "VAELoader", "inputs": {"vae_name": tiny[f"vae:{fam}"]}}
            for other in g.values():
                for k, v in other.get("inputs", {}).items():
                    if isinstance(v, list) and len(v) == 2 and str(v[0]) == nid and v[1] == 2:
                        other["inputs"][k] = [vae_id, 0]
    family = family or "sd2"

    for nid, node in list(g.items()):  # 2. the rest
        ct, inp = node["class_type"], node.setdefault("inputs", {})
        if ct.startswith("CLIPTextEncode"):
            text = json.dumps(inp.get("text", inp.get("clip_l", "")))
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            g[nid] = {"class_type": "LycoTestConditioning", "_meta": node.get("_meta", {}),
                      "inputs": {"tokens": 8, "dim": 1, "pooled_dim": 0, "seed": seed, "scale": 1.0}}
            if model_src is None:
                raise SkipWorkflow("text encoder without a model loader: cannot shape the conditioning")
            g[nid]["inputs"]["model"] = [model_src, 0]
            notes.append(f"{nid} {ct} -> LycoTestConditioning")
        elif ct == "LoraLoader":  # text encoders are replaced, so the CLIP half goes
            g[nid] = node = {"class_type": "LoraLoaderModelOnly", "_meta": node.get("_meta", {}),
                             "inputs": {"model": inp.get("model"), "lora_name": inp.get("lora_name"),
                                        "strength_model": inp.get("strength_model", 1.0)}}
            inp = node["inputs"]
            notes.append(f"{nid} LoraLoader -> LoraLoaderModelOnly")
        elif ct == "VAELoader":
            inp["vae_name"] = tiny[f"vae:{family}"]
        elif ct.startswith("Empty") and "LatentImage" in ct:
            for k in ("width", "height"):
                if k in inp:
                    inp[k] = 64
            if "batch_size" in inp:
                inp["batch_size"] = 1
        elif ct == "SaveImage":
            inp["filename_prefix"] = "demo/" + str(inp.get("filename_prefix", "ComfyUI")).replace("/", "_")
        if "steps" in inp and isinstance(inp["steps"], int):
            inp["steps"] = min(inp["steps"], 4)
        for k, v in list(inp.items()):
            if ADAPTER_INPUTS.search(k) and isinstance(v, str) and v.endswith(".safetensors"):
                inp[k] = make_adapter(family, v)
                notes.append(f"{nid} {k}: {v} -> {inp[k]}")

    referenced = {str(v[0]) for n in g.values() for v in n.get("inputs", {}).values()
                  if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)}
    for nid in [k for k, n in g.items() if n["class_type"] in CLIP_LOADERS and k not in referenced]:
        notes.append(f"{nid} {g.pop(nid)['class_type']} dropped")
    return g, notes


# ---------------------------------------------------------------------------------------------------- main
def recipe_config(lyco_files, family: str, recipe: str) -> dict:
    """The lycoris_config of :func:`adapter_recipe`'s ``recipe`` on ``family`` (lyco_testkit.lycoris_files)."""
    if recipe == "simpletuner":
        return lyco_files.family_config(family)
    if recipe == "sdxl-attn-lokr":
        return json.loads(json.dumps(lyco_files.SDXL_ATTN_CONFIG))
    return lyco_files.config_for(recipe, family)


def _testkit_fingerprint() -> str:
    """Changes whenever the file maker or the twins change (cached files are then remade)."""
    h = hashlib.sha256()
    for rel in ("lycoris_files.py", "twins.py"):
        f = REPO / "tests" / "lyco_testkit" / rel
        h.update(f.read_bytes() if f.exists() else b"")
    return h.hexdigest()[:16]


def adapter_maker(loras_dir: Path, host, verbose: bool = False, cache_dir: Path | None = None):
    """``make(family, real_name) -> file name`` in ``loras_dir``: a tiny LyCORIS file made by
    ``lyco_testkit.lycoris_files.make_lycoris`` on the family's diffusers twin, with :func:`adapter_recipe`'s
    config and :func:`adapter_seed`'s seed. Files are made once per run and kept in ``cache_dir`` (default
    ``<host>/cache/demo_lycoris``) keyed by family, config, seed and the test kit's source, so later runs only
    copy them. ComfyUI is imported in-process first (CPU, ComfyUI root at the front of sys.path), since the
    maker builds twins. Raises SkipWorkflow when no file can be made."""
    made: dict = {}
    cache = Path(cache_dir) if cache_dir else host.cache_dir() / "demo_lycoris"

    def make(family: str, real_name: str) -> str:
        key = (family, str(real_name))
        if key in made:
            if isinstance(made[key], SkipWorkflow):
                raise made[key]
            return made[key]
        recipe, seed = adapter_recipe(real_name, family), adapter_seed(real_name)
        name = tiny_adapter_name(real_name, family)
        try:
            lyco_files = importlib.import_module("lyco_testkit.lycoris_files")
            cfg = recipe_config(lyco_files, family, recipe)
            digest = hashlib.sha256(json.dumps([family, cfg, seed, _testkit_fingerprint()],
                                               sort_keys=True).encode()).hexdigest()[:20]
            cached = cache / f"{family}_{recipe}_{digest}.safetensors"
            if not cached.exists():
                host.import_comfy()
                if not verbose:  # lycoris-lora logs every module it creates (level set when it is imported)
                    importlib.import_module("lycoris.logging")
                    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
                twins = importlib.import_module("lyco_testkit.twins")
                cache.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.safetensors")  # save_weights: by suffix
                lyco_files.make_lycoris(twins.build_diffusers_model(family, 0), tmp, cfg, seed=seed, family=family)
                os.replace(tmp, cached)
            loras_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, loras_dir / name)
        except Exception as e:  # noqa: BLE001 - reported in the table / the test failure
            made[key] = SkipWorkflow(f"cannot make a tiny {recipe!r} LyCORIS for {family!r} "
                                     f"({type(e).__name__}: {e})")
            raise made[key] from e
        made[key] = name
        return name

    return make


def pack_import_error(log: str, folder: str = "comfyui-lycoris") -> str | None:
    """The traceback ComfyUI logged for the pack's import, or None if it imported."""
    if not any("IMPORT FAILED" in ln and ln.rstrip().endswith(folder) for ln in log.splitlines()):
        return None
    m = re.search(rf"^Cannot import \S*/custom_nodes/{re.escape(folder)} module for custom nodes: (.*)$", log, re.M)
    if not m:
        return "import failed (see the server log)"
    start = log.rfind("Traceback", 0, m.start())
    return (log[start:m.start()].strip() + "\n" if start >= 0 else "") + m.group(1)


def builtin_workflows(tiny: dict) -> dict:
    """A stock-only tiny SD2 run (comfyui-host.md §9.7): proves the host works before the pack's workflows."""
    return {"builtin:stock_sd2": {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": tiny["unet:sd2"], "weight_dtype": "default"}},
        "3": {"class_type": "LotusConditioning", "inputs": {}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 7, "steps": 3, "cfg": 1.5,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": tiny["vae:sd2"]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "demo/stock_sd2"}},
    }}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="run only workflows whose file stem contains one of these")
    ap.add_argument("--keep", action="store_true", help="keep the server's base dir (log, outputs)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per workflow")
    ap.add_argument("--workflow-dir", type=Path, default=WORKFLOWS, help="API workflows folder")
    ap.add_argument("-v", "--verbose", action="store_true", help="print substitutions")
    args = ap.parse_args(argv)

    ensure_host()
    import_testkit()
    from lyco_testkit import host
    from lyco_testkit.server import ComfyServer, ComfyServerError, PromptValidationError, PromptExecutionError
    from lyco_testkit import server_models as sm

    tiny = {"unet:sd2": sm.TINY_SD2, "vae:sd2": sm.TINY_TAESD4, "vae:sd15": sm.TINY_TAESD4,
            "vae:sdxl": sm.TINY_TAESD4, "vae:flux1": sm.TINY_TAESD16, "vae:flux2": sm.TINY_TAESD128}
    jobs = dict(builtin_workflows(tiny))
    wf_dir = args.workflow_dir.resolve()
    files = sorted(wf_dir.glob("*.json")) if wf_dir.is_dir() else []
    for f in files:
        if args.only and not any(o in f.stem for o in args.only):
            continue
        jobs[f.stem] = f
    if not files:
        print(f"[demo] no API workflows in {wf_dir} yet: running the built-in one only")

    OUT.mkdir(parents=True, exist_ok=True)
    if not args.only:  # the demo owns output/demo/: no stale images from earlier runs
        for old in OUT.glob("*.png"):
            old.unlink()
    rows, failed = [], False
    t0 = time.monotonic()
    srv = ComfyServer(extra_args=["--disable-api-nodes"])
    try:
        sm.write_server_models(srv.models_dir)
        print(f"[demo] booting ComfyUI from {host.comfyui_path()} (base dir {srv.base_dir}) ...", flush=True)
        srv.start()
        print(f"[demo] ready in {srv.boot_seconds:.1f} s at {srv.url}", flush=True)
        info = srv.object_info()
        pack_nodes = sorted(k for k, v in info.items() if v.get("python_module") == "custom_nodes.comfyui-lycoris")
        print(f"[demo] pack nodes: {', '.join(pack_nodes) or 'none'}")
        import_error = pack_import_error(srv.log_text())
        if import_error:
            failed = True
            rows.append(("pack import", 0.0, 0.0, "FAILED: " + import_error.splitlines()[-1][:300]))
            print(f"[demo] ComfyUI could not import the pack:\n{import_error}", file=sys.stderr)
        make_adapter = None
        for name, src in jobs.items():
            t = time.monotonic()
            prep = 0.0
            try:
                prompt = src if isinstance(src, dict) else json.loads(Path(src).read_text())
                if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), dict):
                    prompt = prompt["prompt"]
                if make_adapter is None:
                    make_adapter = adapter_maker(srv.models_dir / "loras", host, args.verbose)
                prompt, notes = substitute_tiny_models(prompt, tiny, make_adapter)
                if args.verbose:
                    print(f"[demo] {name}: " + "; ".join(notes))
                prep = time.monotonic() - t
                entry = srv.queue(prompt, timeout=args.timeout)
                saved = []
                for i, ref in enumerate(srv.image_refs(entry)):
                    dst = OUT / f"{name.replace(':', '_')}_{i:02d}{Path(ref['filename']).suffix}"
                    dst.write_bytes(srv.view(ref))
                    saved.append(dst.relative_to(REPO).as_posix())
                status = f"ok ({len(saved)} image{'s' * (len(saved) != 1)}{': ' + saved[0] if saved else ''})"
            except SkipWorkflow as e:
                status = f"skipped: {e}"
            except PromptValidationError as e:
                failed = True
                status = "FAILED (validation): " + json.dumps(e.node_errors or e.body.get("error"))[:300]
            except PromptExecutionError as e:
                failed = True
                err = e.execution_error or {}
                status = (f"FAILED in node {err.get('node_id')} {err.get('node_type')}: "
                          f"{err.get('exception_type')}: {str(err.get('exception_message')).strip()[:300]}")
            except (ComfyServerError, OSError, ValueError) as e:
                failed = True
                status = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            rows.append((name, prep, time.monotonic() - t - prep, status))
            print(f"[demo] {name}: {status}", flush=True)
    except ComfyServerError as e:
        failed = True
        print(f"[demo] server error: {e}", file=sys.stderr)
    finally:
        srv.stop(cleanup=not (args.keep or failed))
        if args.keep or failed:
            print(f"[demo] server log: {srv.log_path}")

    width = max([len(r[0]) for r in rows] + [8])
    print(f"\n{'workflow':<{width}}  {'prep s':>6}  {'seconds':>7}  status")
    for name, prep, secs, status in rows:
        print(f"{name:<{width}}  {prep:6.2f}  {secs:7.2f}  {status}")
    print("(prep: substitution + LyCORIS file generation in this process; seconds: POST /prompt to history)")
    print(f"\n{len(rows)} rows, {sum('FAILED' in r[-1] for r in rows)} failed, "
          f"{sum(r[-1].startswith('skipped') for r in rows)} skipped; total {time.monotonic() - t0:.1f} s; "
          f"images in {OUT.relative_to(REPO)}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
