# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad files and bad prompts through the HTTP API of a real ComfyUI server.

- every catalogue file (rel_catalogue) in models/loras: the prompt fails in LycorisLoader with the catalogue's
  error text, then a base-model prompt still runs and gives the bit-exact reference latent (the server survived
  and the shared, cached base MODEL was not modified);
- names that are not in the loras list (``../`` traversal, absolute paths, missing files): 400 from the loader's
  validate_inputs (ComfyUI 0.3.75 does not check V3 combo values itself) and nothing runs;
- a symlink in the loras folder pointing outside it (a file and a folder): listed by ComfyUI, refused by the
  loader's validation (400), the info node at run time and the /lycoris/api/info route; the outside file is never
  read (its atime);
- strengths NaN/Infinity/huge/non-numbers and T-LoRA parameters out of range: 400 with the node and input named.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
import urllib.parse

import pytest

import rel_catalogue
import rel_prompts as rp
from lyco_testkit.server import execution_error

pytestmark = pytest.mark.server

CASES = rel_catalogue.catalogue()
BAD = [c.id for c in CASES if not c.ok]
OK = [c.id for c in CASES if c.ok]
SEEDS = (11, 12)


class Env:
    """The shared server with the catalogue in its loras folder, an outside folder, and reference latents."""

    def __init__(self, server, cases, good, secret, link_file, link_dir_file):
        self.server = server
        self.cases = cases
        self.good = good
        self.secret = secret
        self.link_file = link_file
        self.link_dir_file = link_dir_file
        self.refs: dict = {}
        self.turn = 0

    def check_base(self, after: dict | None = None) -> dict | None:
        """A base-model prompt (alternating seeds, so it really executes) equals its fresh reference. With
        ``after`` (a prompt expected to fail), that prompt is queued first and its failure returned (both are
        queued at once: the check runs right after it, in queue order)."""
        seed = SEEDS[self.turn % 2]
        self.turn += 1
        failed = None
        if after is not None:
            bad_id = self.server.submit(after)
        check_id = self.server.submit(rp.graph(seed=seed, size=16, prefix="check"))
        if after is not None:
            entry = self.server.wait(bad_id)
            assert entry["status"]["status_str"] == "error", entry.get("outputs")
            failed = execution_error(entry)
        entry = self.server.wait(check_id)
        assert entry["status"]["status_str"] == "success", execution_error(entry)
        lat = rp.read_latent(self.server, entry)
        assert lat.equal(self.refs[seed]), "the base model's output changed after a failed prompt"
        return failed


def _atime_works(folder) -> bool:
    probe = folder / "atime_probe"
    probe.write_bytes(b"x" * 64)
    os.utime(probe, (time.time() - 3600, time.time()))
    before = probe.stat().st_atime
    probe.read_bytes()
    works = probe.stat().st_atime != before
    probe.unlink()
    return works


@pytest.fixture(scope="module")
def env(comfy_server, rel_sources):
    loras = comfy_server.models_dir / "loras"
    cases = {c.id: c for c in rel_catalogue.build_catalogue(loras, rel_sources)}
    good = rel_catalogue.good_files(loras, rel_sources)
    outside = comfy_server.base_dir / "outside_models"
    outside.mkdir(exist_ok=True)
    secret = outside / "secret.safetensors"
    secret.write_bytes((loras / good["locon"]).read_bytes())
    link_file = "rel_link_outside.safetensors"
    for name, target in ((link_file, secret), ("rel_linkdir", outside)):
        if (loras / name).is_symlink():
            (loras / name).unlink()
        (loras / name).symlink_to(target, target_is_directory=target.is_dir())
    e = Env(comfy_server, cases, good, secret, link_file, "rel_linkdir/secret.safetensors")
    rp.free(comfy_server)
    for seed in SEEDS:
        e.refs[seed], _ = rp.run_latent(comfy_server, rp.graph(seed=seed, size=16, prefix="check"))
    # the file outside is marked unread: any read of it from now on moves its atime (relatime)
    e.atime_works = _atime_works(outside)
    os.utime(secret, (time.time() - 3600, time.time()))
    e.secret_atime = secret.stat().st_atime
    yield e
    for name in ("rel_linkdir", link_file):
        if (loras / name).is_symlink():
            (loras / name).unlink()
    for case in cases.values():  # the shared server's loras folder keeps only the good files
        (loras / case.path_name).unlink(missing_ok=True)


def _exec_error(env, prompt) -> dict:
    err = env.server.queue_expect_error(prompt)
    assert err["stage"] == "execution", err
    return err["error"]


@pytest.mark.parametrize("case_id", BAD)
def test_bad_file_prompt(env, case_id):
    case = env.cases[case_id]
    err = env.check_base(after=rp.graph([(case.path_name, 1.0, "auto")], prefix="bad"))
    assert err["node_type"] == "LycorisLoader" and err["node_id"] == "10"
    assert err["exception_type"].endswith(case.error), err["exception_type"]
    msg = err["exception_message"]
    assert case.path_name in msg
    for text in case.expect + case.names + (case.fix,):
        assert text in msg, f"{text!r} not in: {msg}"


@pytest.mark.parametrize("case_id", OK)
def test_loadable_file_prompt(env, case_id):
    case = env.cases[case_id]
    for mode in (("bypass",) if "fp8" in case_id else ("merged",)):  # both modes: in-process (test_bad_files)
        lat, entry = rp.run_latent(env.server, rp.graph([(case.path_name, 0.8, mode)], seed=SEEDS[0], size=16,
                                                        prefix="ok"))
        assert not lat.equal(env.refs[SEEDS[0]]) and bool(lat.isfinite().all())
        text = "\n".join(entry["outputs"].get("10", {}).get("text", []))
        assert f"mode {mode}" in text
        for needle in case.expect:
            assert needle in text, f"{needle!r} not in the loader's text:\n{text}"
    env.check_base()


TRAVERSAL = ["../rel_good_locon.safetensors", "../../outside_models/secret.safetensors",
             "../outside_models/secret.safetensors", "loras/../../outside_models/secret.safetensors",
             "..\\..\\outside_models\\secret.safetensors", "/etc/passwd", "rel_missing.safetensors", "",
             "rel_good_locon.safetensors\x00.txt", "./rel_good_locon.safetensors"]


@pytest.mark.parametrize("name", TRAVERSAL + ["<absolute>"])
def test_names_outside_the_list_are_400(env, name):
    """ComfyUI 0.3.75 does not check V3 combo values against their options (only V1 list types get
    ``value_not_in_list``), so the loader's validate_inputs does: a 400 ``custom_validation_failed`` naming
    lycoris_name, before anything runs or is opened."""
    if name == "<absolute>":
        name = str(env.secret)
    err = env.server.queue_expect_error(rp.graph([(name, 1.0, "auto")], prefix="bad"))
    assert err["stage"] == "validation" and err["http_status"] == 400
    errors = err["node_errors"]["10"]["errors"]
    assert {e["type"] for e in errors} == {"custom_validation_failed"}, errors
    mine = [e for e in errors if e["extra_info"]["input_name"] == "lycoris_name"]
    assert mine and "is not a file in ComfyUI's models/loras folders" in mine[0]["details"], errors


def test_v1_combo_still_gives_value_not_in_list(env):
    """The stock behaviour the brief expected, for comparison: a V1 loader's combo answers value_not_in_list."""
    prompt = rp.graph()
    prompt["10"] = {"class_type": "LoraLoaderModelOnly",
                    "inputs": {"model": ["1", 0], "lora_name": "../outside_models/secret.safetensors",
                               "strength_model": 1.0}}
    prompt["5"]["inputs"]["model"] = ["10", 0]
    err = env.server.queue_expect_error(prompt)
    assert err["http_status"] == 400
    assert err["node_errors"]["10"]["errors"][0]["type"] == "value_not_in_list"


def test_bad_mode_is_400(env):
    _assert_400(env, rp.graph([(env.good["locon"], 1.0, "evil")]), "10", "mode")


def _assert_400(env, prompt, node: str, input_name: str, types=("custom_validation_failed",)):
    err = env.server.queue_expect_error(prompt)
    assert err["stage"] == "validation" and err["http_status"] == 400, err
    errors = err["node_errors"][node]["errors"]
    assert errors and {e["type"] for e in errors} <= set(types), errors
    assert any(e["extra_info"]["input_name"] == input_name or input_name in e.get("details", "") for e in errors)
    return errors


BAD_STRENGTHS = [math.nan, math.inf, -math.inf, 1e30, -1e308, 100.5, "nan", "Infinity", "abc", None]


@pytest.mark.parametrize("value", BAD_STRENGTHS, ids=[repr(v) for v in BAD_STRENGTHS])
def test_bad_strength_is_400(env, value):
    """JSON NaN/Infinity are accepted by ComfyUI's JSON parser and pass its FLOAT min/max check (NaN compares
    false): the nodes' validate_inputs refuses them. Strings that are not numbers fail ComfyUI's float()."""
    good = env.good["locon"]
    types = ("custom_validation_failed", "invalid_input_type")
    _assert_400(env, rp.graph([(good, value, "merged")]), "10", "strength", types)
    strength_node = rp.graph([(good, 1.0, "merged")], strength_node=1.0)
    strength_node["30"]["inputs"]["strength"] = value
    _assert_400(env, strength_node, "30", "strength", types)


def test_json_nan_really_reaches_validation(env):
    """The raw body carries the NaN literal (what a script's json.dumps sends): still a 400, not a crash."""
    body = json.dumps({"prompt": rp.graph([(env.good["locon"], math.nan, "merged")])})
    assert "NaN" in body
    status, data = env.server.request("POST", "/prompt", body.encode())
    assert status == 400, data[:500]
    answer = json.loads(data)
    assert answer["node_errors"]["10"]["errors"][0]["type"] == "custom_validation_failed"


BAD_TLORA = [{"min_rank": 0}, {"min_rank": -2}, {"min_rank": 5000}, {"min_rank": 10 ** 12},
             {"min_rank": math.nan}, {"min_rank": "two"}, {"tlora_alpha": math.nan}, {"tlora_alpha": -1.0},
             {"tlora_alpha": 1e9}, {"tlora_alpha": math.inf}, {"tlora_alpha": "x"}]


@pytest.mark.parametrize("params", BAD_TLORA, ids=[repr(p) for p in BAD_TLORA])
def test_bad_tlora_params_are_400(env, params):
    name = next(iter(params))
    prompt = rp.graph([(env.good["locon"], 1.0, "bypass")], tlora=params)
    _assert_400(env, prompt, "31", name, ("custom_validation_failed", "invalid_input_type"))


def test_server_alive_after_validation_errors(env):
    env.check_base()
    env.check_base()


@pytest.mark.parametrize("which", ["file", "folder"])
def test_symlink_out_of_loras_refused(env, which):
    name = env.link_file if which == "file" else env.link_dir_file
    listed = env.server.object_info("LycorisLoader")["LycorisLoader"]["input"]["required"]["lycoris_name"]
    assert name in json.dumps(listed), "ComfyUI is expected to list the link (it follows links)"
    errors = _assert_400(env, rp.graph([(name, 1.0, "auto")], prefix="bad"), "10", "lycoris_name")
    assert any("resolves outside the loras folders" in e["details"] and name in e["details"] for e in errors)
    # LycorisInfo validates the name too: a 400 before anything runs
    info = {"1": {"class_type": "LycorisInfo", "inputs": {"lycoris_name": name}}}
    errors = _assert_400(env, info, "1", "lycoris_name")
    assert any("resolves outside the loras folders" in e["details"] for e in errors)
    env.check_base()


def _route(env, name: str | None):
    path = "/lycoris/api/info" + ("" if name is None else "?" + urllib.parse.urlencode({"name": name}))
    status, data = env.server.request("GET", path)
    if status == 404:
        pytest.skip("GET /lycoris/api/info is not registered in this checkout")
    return status, data


@pytest.mark.parametrize("name", TRAVERSAL[:6] + ["<absolute>", "<link>", "<linkdir>"])
def test_info_route_refuses_outside_names(env, name):
    name = {"<absolute>": str(env.secret), "<link>": env.link_file, "<linkdir>": env.link_dir_file}.get(name, name)
    status, data = _route(env, name)
    if not name:
        assert status == 400
        return
    assert status == 200, data[:300]
    answer = json.loads(data)
    assert answer["found"] is False, answer
    assert "loras" in answer["error"] and ("not a file" in answer["error"] or "outside" in answer["error"])


def test_info_route_reads_a_listed_file(env):
    status, data = _route(env, env.good["lokr"])
    assert status == 200 and json.loads(data)["found"] is True


def test_outside_file_never_read(env):
    """Runs last in this module (pytest keeps file order): the secret outside the loras folder, reachable by
    traversal names and by the two symlinks, was never read by the server."""
    if not env.atime_works:
        pytest.skip("this filesystem does not update access times")
    assert env.secret.stat().st_atime == env.secret_atime, "a file outside models/loras was read"
    env.check_base()


def test_prompt_copy_is_not_mutated():
    """graph() builds fresh dicts (the tests above rely on it)."""
    a = rp.graph([("x", 1.0, "auto")])
    b = copy.deepcopy(a)
    rp.graph([("x", 2.0, "auto")])
    assert a == b
