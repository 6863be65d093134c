# SPDX-License-Identifier: GPL-3.0-or-later
"""Long endurance run: N (default 200) alternating API prompts on a freshly booted ComfyUI server with the pack.

The prompts cycle through merged, bypass, T-LoRA with the sampler wrapper, a merged+bypass stack, the strength
node, T-LoRA with the file's schedule and the bare model (``tests/reliability/rel_endurance.py``), on the tiny
flux2 test model with LyCORIS files made by lycoris-lora. Every output must equal the same prompt run fresh
(after ``POST /free``), and the server's RSS may grow less than 5% after the first cycle.

    .host/venv/bin/python bench/endurance.py                 # 200 prompts
    .host/venv/bin/python bench/endurance.py -n 1000 --steps 4 --json endurance.json

Exit status 0 when both hold, 1 otherwise. CI runs the same code shortened (tests/reliability/test_endurance.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO / "tests", REPO / "tests" / "reliability"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

MAX_GROWTH = 0.05


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="prompts after the references (default 200)")
    ap.add_argument("--steps", type=int, default=2, help="sampler steps per prompt (default 2)")
    ap.add_argument("--size", type=int, default=32, help="image size in pixels (default 32)")
    ap.add_argument("--json", help="write the summary and the RSS series here")
    args = ap.parse_args(argv)

    from lyco_testkit import host
    from lyco_testkit.server import ComfyServer
    from lyco_testkit.server_models import write_server_models

    reason = host.comfyui_unavailable_reason()
    if reason:
        print(f"ComfyUI host unavailable: {reason} (run scripts/test once to install it)", file=sys.stderr)
        return 2
    import rel_catalogue
    from rel_endurance import configs, run_endurance

    with tempfile.TemporaryDirectory(prefix="lyco_endurance_") as tmp, ComfyServer() as srv:
        write_server_models(srv.models_dir)
        t0 = time.monotonic()
        sources = rel_catalogue.build_sources(Path(tmp))
        good = rel_catalogue.good_files(srv.models_dir / "loras", sources)
        print(f"server up in {srv.boot_seconds:.1f} s, files made in {time.monotonic() - t0:.1f} s; "
              f"{len(configs(good))} configs, {args.n} prompts")
        res = run_endurance(srv, good, args.n, steps=args.steps, size=args.size, log=print)
        alive = srv.alive()
    summary = res.summary() | {"server_alive": alive, "max_growth_pct": 100 * MAX_GROWTH}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary | {"rss_series": res.rss_series}, indent=1))
    ok = alive and not res.mismatches and res.growth < MAX_GROWTH
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
