# SPDX-License-Identifier: GPL-3.0-or-later
"""Property-based fuzzing (hypothesis) of the file reader, the module parser and the key mapper: whatever the
bytes, keys, shapes and dtypes, only the pack's LycorisError subclasses come out: never another exception, never
a hang (a deadline per example).

And for modules that pass every check: the merged weight has the target's shape, and (linear layers) the bypass
output equals the merged layer's output, so nothing accepted can fail later at sampling time.

CI runs a fixed (derandomized) set of examples; ``LYCO_FUZZ_EXAMPLES=2000 LYCO_FUZZ_RANDOM=1`` explores more.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile

import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lycoris_core.adapters.registry import ADAPTERS, check_target, parse_modules  # noqa: E402
from lycoris_core.errors import LycorisError  # noqa: E402
from lycoris_core.layer import LayerSpec  # noqa: E402
from lycoris_core.safetensors_file import read_header, read_lycoris_file  # noqa: E402

SCALE = int(os.environ.get("LYCO_FUZZ_EXAMPLES", "0") or 0)
RANDOM = os.environ.get("LYCO_FUZZ_RANDOM") == "1"


def fuzz_settings(examples: int, deadline_ms: int = 3000):
    return settings(max_examples=SCALE or examples, deadline=deadline_ms, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


_TMP = tempfile.mkdtemp(prefix="lyco_fuzz_")


def _write(data: bytes, ext: str = ".safetensors") -> str:
    path = os.path.join(_TMP, "f" + ext)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _only_our_errors(fn, *args, **kwargs):
    """fn(...) or None when it raised a LycorisError; any other exception fails the property."""
    try:
        return fn(*args, **kwargs)
    except LycorisError:
        return None


# ------------------------------------------------------------------------------------------ file reader
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U16", "U32",
          "U64", "F7", "", "f32"]
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
         "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                             max_size=3),
                           max_leaves=8)


@st.composite
def headers(draw):
    """A safetensors header: mostly plausible entries laid out back to back, with random corruptions."""
    entries, pos = {}, 0
    for i in range(draw(st.integers(0, 5))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        n = SIZES.get(dtype, 4)
        for d in shape:
            n *= d
        name = draw(st.sampled_from(["m.lora_up.weight", "m.lora_down.weight", "m.alpha", "k.lokr_w1", "k.lokr_w2",
                                     f"x{i}", "m", ".", "a.b.c"]))
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    corrupt = draw(st.sampled_from(["none", "value", "entry", "offsets", "shape"]))
    if entries and corrupt != "none":
        key = draw(st.sampled_from(sorted(entries)))
        if corrupt == "value":
            entries[key] = draw(json_values)
        elif corrupt == "entry":
            entries[key][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(json_values)
        elif corrupt == "offsets":
            entries[key]["data_offsets"] = [draw(st.integers(-5, pos + 5)), draw(st.integers(-5, pos + 5))]
        else:
            entries[key]["shape"] = draw(st.lists(st.integers(-2, 2 ** 40), max_size=4))
    if draw(st.booleans()):
        entries["__metadata__"] = draw(st.one_of(
            st.dictionaries(st.text(max_size=6), st.text(max_size=20), max_size=3), json_values,
            st.just({"lycoris_config": "{not json"}), st.just({"lycoris_config": json.dumps({"algo": "tlora"})})))
    return entries, pos


@st.composite
def safetensors_bytes(draw):
    header, size = draw(headers())
    body = json.dumps(header).encode()
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=64))
    declared = len(body) if draw(st.integers(0, 7)) else draw(st.integers(0, 2 ** 64 - 1))
    data = draw(st.binary(min_size=size, max_size=size)) if size <= 4096 else b"\0" * size
    blob = struct.pack("<Q", declared) + body + data
    cut = draw(st.one_of(st.none(), st.integers(0, len(blob))))
    if cut is not None:
        blob = blob[:cut]
    if blob and draw(st.integers(0, 4)) == 0:
        i = draw(st.integers(0, len(blob) - 1))
        blob = blob[:i] + bytes([draw(st.integers(0, 255))]) + blob[i + 1:]
    return blob


@fuzz_settings(300)
@given(safetensors_bytes())
def test_reader_structured_bytes(blob):
    path = _write(blob)
    got = _only_our_errors(read_lycoris_file, path)
    head = _only_our_errors(read_header, path)
    if got is not None:
        assert head is not None and set(got.tensors) == set(head[1])


@fuzz_settings(150)
@given(st.binary(max_size=300), st.sampled_from([".safetensors", ".sft", ".ckpt", ".pt", ".bin", ""]))
def test_reader_arbitrary_bytes(blob, ext):
    _only_our_errors(read_lycoris_file, _write(blob, ext))


# ------------------------------------------------------------------------------------------ module parser
SUFFIXES = sorted({k for cls in ADAPTERS.values() for k in cls.REQUIRED + cls.OPTIONAL}
                  | {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


def _tensor(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(tuple(shape), generator=g) * 0.5
    return t.to(dtype) if dtype.is_floating_point else (t * 10).to(dtype)


@st.composite
def random_modules(draw):
    """Random key sets (known suffixes and junk), random shapes (0-4 dims) and dtypes."""
    tensors = {}
    for m in range(draw(st.integers(1, 3))):
        for suffix in draw(st.sets(st.sampled_from(SUFFIXES + ["junk", "lora_up", "weight.x"]), max_size=6)):
            shape = draw(st.lists(st.integers(0, 6), max_size=4))
            dtype = draw(st.sampled_from(FLOATS + [torch.int32, torch.bool]))
            tensors[f"mod{m}.{suffix}"] = _tensor(shape, dtype, draw(st.integers(0, 1000)))
    if draw(st.integers(0, 9)) == 0:
        tensors[draw(st.sampled_from(["alpha", "mod0", ".x", "mod0."]))] = torch.ones(1)
    return tensors


def _well_formed(algo: str, out: int, inp: int, r: int, draw) -> dict:
    """A consistent module of `algo` for a linear (out, inp) weight."""
    if algo == "locon":
        t = {"lora_up.weight": (out, r), "lora_down.weight": (r, inp), "alpha": ()}
        if draw(st.booleans()):
            t["dora_scale"] = draw(st.sampled_from([(out, 1), (1, inp)]))
    elif algo == "loha":
        t = {"hada_w1_a": (out, r), "hada_w1_b": (r, inp), "hada_w2_a": (out, r), "hada_w2_b": (r, inp), "alpha": ()}
    elif algo == "lokr":
        a = draw(st.sampled_from([d for d in (1, 2, 4) if out % d == 0]))
        c = draw(st.sampled_from([d for d in (1, 2, 4) if inp % d == 0]))
        t = {"lokr_w1": (a, c), "alpha": ()}
        if draw(st.booleans()):
            t["lokr_w2"] = (out // a, inp // c)
        else:
            t.update({"lokr_w2_a": (out // a, r), "lokr_w2_b": (r, inp // c)})
    elif algo == "full":
        t = {"diff": (out, inp), "diff_b": (out,)}
    elif algo == "ia3":
        t = {"weight": (out,), "on_input": ()}
    elif algo == "glora":
        t = {"a1.weight": (inp, r), "a2.weight": (r, inp), "b1.weight": (out, r), "b2.weight": (r, inp), "alpha": ()}
    elif algo == "diag-oft":
        bs = draw(st.sampled_from([d for d in (1, 2, 4) if out % d == 0]))
        t = {"oft_blocks": (out // bs, bs, bs)}
    elif algo == "boft":
        t = {"oft_blocks": (2, out // 2, 2, 2)} if out % 2 == 0 else {"oft_blocks": (1, out, 1, 1)}
    elif algo == "tlora":
        t = {"q_layer.weight": (r, inp), "p_layer.weight": (out, r), "lambda_layer": (1, r), "alpha": ()}
    else:  # norm
        t = {"w_norm": (out,), "b_norm": (out,)}
    return t


@st.composite
def mutated_modules(draw):
    """One well-formed module of a random algorithm, then 0-2 mutations (drop a key, change a dim or the ndim,
    add a junk key, change a dtype), and the (out, in) of the linear layer it was made for."""
    algo = draw(st.sampled_from(sorted(ADAPTERS)))
    out, inp, r = draw(st.sampled_from([4, 6, 8])), draw(st.sampled_from([4, 6, 8])), draw(st.integers(1, 4))
    shapes = _well_formed(algo, out, inp, r, draw)
    dtypes = {k: draw(st.sampled_from(FLOATS[:3])) if draw(st.integers(0, 3)) == 0 else torch.float32
              for k in shapes}
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(shapes)))
        kind = draw(st.sampled_from(["drop", "dim", "ndim", "junk", "dtype"]))
        if kind == "drop" and len(shapes) > 1:
            del shapes[key]
            dtypes.pop(key)
        elif kind == "dim" and shapes[key]:
            i = draw(st.integers(0, len(shapes[key]) - 1))
            s = list(shapes[key])
            s[i] = draw(st.integers(0, 9))
            shapes[key] = tuple(s)
        elif kind == "ndim":
            shapes[key] = tuple(shapes[key]) + (1,) if draw(st.booleans()) else tuple(shapes[key])[:-1]
        elif kind == "junk":
            shapes["junk_" + key] = (2,)
            dtypes["junk_" + key] = torch.float32
        else:
            dtypes[key] = draw(st.sampled_from(FLOATS + [torch.int64]))
    seed = draw(st.integers(0, 1000))
    tensors = {f"mod.{k}": _tensor(s, dtypes[k], seed + i) for i, (k, s) in enumerate(sorted(shapes.items()))}
    if "on_input" in shapes:
        tensors["mod.on_input"] = torch.tensor(float(draw(st.booleans())))
    return tensors, (out, inp)


def _check_accepted(adapters: dict, target_shape) -> None:
    """Accepted modules either refuse the target (ShapeMismatchError) or compute: merged weight of the target's
    shape and, for linear targets, bypass == op(x, merged)."""
    for adapter in adapters.values():
        shape = adapter.expected_weight_shape() or target_shape
        shape = tuple(shape) if len(tuple(shape)) >= 2 else tuple(target_shape)
        if not _passes(check_target, adapter, shape, "fuzz target"):
            continue
        if adapter.algo == "norm":
            continue  # norm layers: covered by the adapter tests (needs a norm LayerSpec)
        adapter = adapter.to(dtype=torch.float32)  # as merged.py / bypass.py hand it over (fp8 files included)
        w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        merged = _only_our_errors(adapter.merged_weight, w, 0.7)
        assert merged is not None, f"{adapter} passed check_target{shape} but merged_weight refused"
        assert merged.shape == w.shape
        if len(shape) == 2:
            x = torch.randn(3, shape[1], generator=torch.Generator().manual_seed(2))
            spec = LayerSpec("linear", shape, weight=lambda dtype, device, w=w: w.to(dtype), bias=lambda *_: None)
            y = F.linear(x, w)
            got = adapter.bypass(x, y, 0.7, spec)
            bias = adapter.merged_bias(None, 0.7)  # full's diff_b changes the bias
            want = F.linear(x, merged, None if bias is None else bias.float())
            assert got.shape == want.shape
            tol = 1e-3 * (1 + float(want.abs().max()))
            if bool(torch.isfinite(want).all()):
                assert float((got - want).abs().max()) <= tol, f"{adapter}: bypass != merged"
            if hasattr(adapter, "bypass_"):  # the in-place (fused) path the bypass hook uses
                got_ = adapter.bypass_(x, y.clone(), 0.7, spec)
                assert got_.shape == want.shape
                if bool(torch.isfinite(want).all()):
                    assert float((got_ - want).abs().max()) <= tol, f"{adapter}: bypass_ != merged"


def _passes(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except LycorisError:
        return False


@fuzz_settings(300)
@given(random_modules())
def test_parser_random_key_sets(tensors):
    adapters = _only_our_errors(parse_modules, tensors, "fuzz.safetensors")
    if adapters:
        _check_accepted(adapters, (6, 6))


@fuzz_settings(400)
@given(mutated_modules())
def test_parser_mutated_modules(case):
    tensors, target = case
    adapters = _only_our_errors(parse_modules, tensors, "fuzz.safetensors")
    if adapters:
        _check_accepted(adapters, target)


# ------------------------------------------------------------------------------------------ key mapper + apply
@pytest.mark.binding
def test_apply_random_files_on_a_model(pack, pack_mod, rel_catalogue_dir, tmp_path):
    """Files whose module names are real (from the good flux2 file) or junk, with random key sets and shapes,
    through apply_lycoris on the tiny flux2 model (merged: the patched weights are then computed): only
    LycorisErrors, and the input model is never modified."""
    from safetensors.torch import load_file, save_file

    from lyco_testkit import twins
    from rel_util import state_hash

    apply = pack_mod("lycoris_comfy.apply").apply_lycoris
    errors = pack_mod("lycoris_core.errors")
    good = load_file(str(rel_catalogue_dir.folder / rel_catalogue_dir.good["locon"]))
    real = sorted({k.split(".", 1)[0] for k in good})
    base = twins.build_comfy_twin("flux2", 0)
    before = state_hash(base)
    path = tmp_path / "f.safetensors"

    @fuzz_settings(15, deadline_ms=10000)
    @given(st.data())
    def run(data):
        tensors = {k: v for k, v in good.items() if data.draw(st.integers(0, 5))}
        case, _ = data.draw(mutated_modules())
        name = data.draw(st.sampled_from(real + ["lycoris_nothing_here"]))
        tensors = {k: v for k, v in tensors.items() if not k.startswith(name + ".")}
        tensors.update({name + k[3:]: v for k, v in case.items()})
        if not tensors:
            return
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        mode = data.draw(st.sampled_from(["merged", "bypass", "auto"]))
        try:
            patched, _ = apply(base, str(path), data.draw(st.sampled_from([1.0, -0.5, 3.0])), mode)
        except errors.LycorisError:
            return
        if patched.patches:
            patched.patch_model(device_to=torch.device("cpu"))
            patched.unpatch_model()
        assert state_hash(base) == before

    run()
