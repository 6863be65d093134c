# SPDX-License-Identifier: GPL-3.0-or-later
"""`bench/run.py --quick` runs end to end on tiny models and writes JSON holding every row of the benchmark
(each algorithm x loader form, the bases, LyCORIS's own bypass) with the measured fields and the target list."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import pytest

from lyco_testkit import host

RUN = host.REPO_ROOT / "bench" / "run.py"
BUDGET_S = 60


def _bench_module():
    spec = importlib.util.spec_from_file_location("lyco_bench_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)  # stdlib-only at import time
    return mod


def test_quick_run_writes_every_row(tmp_path):
    reason = host.comfyui_unavailable_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("diffusers")
    pytest.importorskip("lycoris")
    out = tmp_path / "bench.json"
    t0 = time.perf_counter()
    # one torch thread: the smoke run is overhead-bound, and a second spinning thread stalls on a busy machine
    proc = subprocess.run([host.host_python(), str(RUN), "--quick", "--threads", "1", "--out", str(out)],
                          cwd=host.REPO_ROOT, capture_output=True, text=True, timeout=4 * BUDGET_S)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    expected = _bench_module().row_ids(("flux2", "sdxl"), quick=True)
    rows = {r["id"]: r for r in data["rows"]}
    assert sorted(rows) == sorted(expected), set(rows) ^ set(expected)
    assert data["expected_rows"] == expected
    for rid, r in rows.items():
        assert r["step_ms"] and r["step_ms"] > 0, rid
        if r["kind"] in ("base", "builtin", "merged", "bypass"):
            assert r["load_s"] and r["load_s"] > 0, rid
            assert r["mem_step_mb"] is not None, rid
        if r["kind"] in ("builtin", "merged", "bypass"):
            assert r["strength_change_s"] and r["strength_set_ms"] is not None, rid
        if r["kind"] == "bypass":
            assert r["theory_overhead"] > 0 and r["measured_over_theory"] is not None, rid
        if r["kind"] == "merged":
            assert r["patches"] == rows[rid.replace("/merged", "/builtin")]["patches"], rid  # same work placed
    assert rows["flux2/tlora64/bypass"]["tlora_over_lora"] > 0
    assert data["targets"] and all({"target", "value", "limit", "met"} <= set(t) for t in data["targets"])
    assert "| LoRA r16 |" in proc.stdout and "targets (issue 8)" in proc.stdout
    assert wall < BUDGET_S or data["load_average_start"][0] > 1.5, f"quick run took {wall:.0f} s on an idle machine"
