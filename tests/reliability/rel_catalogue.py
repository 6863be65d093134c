# SPDX-License-Identifier: GPL-3.0-or-later
"""The bad-input catalogue: LyCORIS files a user may download or a script may name, each with the error it must
produce (class, the words that name the problem, the key/module it must name, the fix it must suggest), plus the
"bad but loadable" files (other dtypes, odd metadata) that must load and work.

Files are derived from two good tiny-Flux-2 files (a LoCon and a LoKr made by lycoris-lora on the twin model,
``lyco_testkit.twins.build_diffusers_model("flux2", 0)`` = the test pack's ``LycoTestTinyModel`` flux2 seed 0),
by editing their tensors or their bytes. :func:`build_catalogue` writes every case into one folder (in-process
tests use a temp dir, server tests the server's ``models/loras``); names start with ``rel_`` so they never clash
with other tests' files. Used by ``test_bad_files.py`` (in-process) and ``test_bad_prompts.py`` (HTTP).
"""
from __future__ import annotations

import json
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save, save_file

FAMILY = "flux2"
PREFIX = "rel_"
HUGE_HEADER = 150 * 1024 * 1024  # over the reader's 100 MiB header limit (a sparse file: no disk used)
ABSURD_ELEMENTS = 64 * 1024 * 1024  # one F32 tensor of 256 MiB (sparse) on a model whose largest weight has 36864


@dataclass
class Case:
    """One catalogue entry. ``ok`` cases must load; the others must raise ``error`` with every string of
    ``expect`` (and ``names``: the key/module) in the message, which also names the file and says ``Fix``."""

    id: str
    filename: str
    make: Callable[[Path, "Sources"], None]
    error: str | None = None  # LycorisError subclass name; None for ok cases
    expect: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    fix: str = "Fix"
    ok: bool = False
    note: str = ""
    sparse: bool = False  # written as a sparse file (size on disk ~0)
    extra: dict = field(default_factory=dict)

    @property
    def path_name(self) -> str:
        return PREFIX + self.filename


@dataclass
class Sources:
    """The good files' tensors and metadata the cases are derived from."""

    locon: dict
    lokr: dict
    sd15_locon: dict
    metadata: dict
    extra: dict = field(default_factory=dict)  # name -> (tensors, metadata): tlora, loha (good files)

    def module(self, tensors: dict, suffix: str) -> str:
        """The first module (sorted) having `suffix`."""
        return sorted(k.split(".", 1)[0] for k in tensors if k.split(".", 1)[1] == suffix)[0]


# ------------------------------------------------------------------------------------------------ byte helpers
def _header_bytes(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


def _raw(path: Path, header: dict, data: bytes = b"", declared: int | None = None) -> None:
    body = _header_bytes(header)
    path.write_bytes(struct.pack("<Q", len(body) if declared is None else declared) + body + data)


def _save(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata)


def _split(path_bytes: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", path_bytes[:8])
    return json.loads(path_bytes[8:8 + n]), path_bytes[8 + n:]


def _good_bytes(src: "Sources", _path: Path | None = None) -> bytes:
    return save({k: v.contiguous() for k, v in src.locon.items()}, src.metadata)


def _last_key(data: bytes) -> str:
    header, _ = _split(data)
    header.pop("__metadata__", None)
    return max(header, key=lambda k: header[k]["data_offsets"][1])


# ------------------------------------------------------------------------------------------------ makers
def _truncated_data(p: Path, src: Sources) -> None:
    p.write_bytes(_good_bytes(src, p)[:-100])


def _truncated_header(p: Path, src: Sources) -> None:
    p.write_bytes(_good_bytes(src, p)[:60])


def _empty(p: Path, src: Sources) -> None:
    p.write_bytes(b"")


def _header_larger(p: Path, src: Sources) -> None:
    data = _good_bytes(src, p)
    p.write_bytes(struct.pack("<Q", 10 ** 9) + data[8:])


def _corrupt_header(p: Path, src: Sources) -> None:
    data = bytearray(_good_bytes(src, p))
    data[8:40] = b"\xff\xfe garbage, not json \x00\x01\x02\x03\x04 "[:32]
    p.write_bytes(bytes(data))


def _header_list(p: Path, src: Sources) -> None:
    _raw(p, [], b"")  # type: ignore[arg-type]


def _torch_save(p: Path, src: Sources, zip_format: bool) -> None:
    torch.save(dict(list(src.locon.items())[:4]), str(p), _use_new_zipfile_serialization=zip_format)


def _pickle_ext(p: Path, src: Sources) -> None:
    _torch_save(p, src, True)


def _zip_renamed(p: Path, src: Sources) -> None:
    _torch_save(p, src, True)
    assert p.read_bytes()[:4] == b"PK\x03\x04"


def _pickle_renamed(p: Path, src: Sources) -> None:
    _torch_save(p, src, False)
    assert p.read_bytes()[:1] == b"\x80"


def _plain_pickle_renamed(p: Path, src: Sources) -> None:
    p.write_bytes(pickle.dumps({"lycoris_x.lora_up.weight": [1.0, 2.0]}, protocol=4))


def _unknown_dtype(p: Path, src: Sources) -> None:
    data = _good_bytes(src, p)
    header, body = _split(data)
    key = _last_key(data)
    header[key]["dtype"] = "F7"
    _raw(p, header, body)


def _overlapping(p: Path, src: Sources) -> None:
    k = "lycoris_overlap"
    header = {f"{k}.lora_up.weight": {"dtype": "F32", "shape": [2, 1], "data_offsets": [0, 8]},
              f"{k}.lora_down.weight": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}}
    _raw(p, header, b"\0" * 8)


def _trailing(p: Path, src: Sources) -> None:
    p.write_bytes(_good_bytes(src, p) + b"\0" * 64)


def _metadata_not_string(p: Path, src: Sources) -> None:
    data = _good_bytes(src, p)
    header, body = _split(data)
    header["__metadata__"] = {"lycoris_config": {"algo": "locon"}, "ss_steps": 100}
    _raw(p, header, body)


def _metadata_not_object(p: Path, src: Sources) -> None:
    data = _good_bytes(src, p)
    header, body = _split(data)
    header["__metadata__"] = ["lycoris_config"]
    _raw(p, header, body)


def _huge_header(p: Path, src: Sources) -> None:
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", HUGE_HEADER))
        f.write(b'{"__metadata__":{"x":"')
    os.truncate(p, 8 + HUGE_HEADER + 16)


def _absurd_shape(p: Path, src: Sources) -> None:
    k = "lycoris_transformer_blocks_0_attn_to_q"
    _raw(p, {f"{k}.lora_up.weight": {"dtype": "F32", "shape": [2 ** 31, 2 ** 31], "data_offsets": [0, 16]}},
         b"\0" * 16)


def _absurd_tensor(p: Path, src: Sources) -> None:
    """A well-formed file whose one tensor (256 MiB, sparse zeros) is far larger than anything in the model."""
    k = src.module(src.locon, "lora_up.weight")
    header = {}
    pos = 0
    for key, t in sorted(src.locon.items()):
        if not key.startswith(k + "."):
            continue
        if key.endswith("lora_down.weight"):
            shape = [int(t.shape[0]), ABSURD_ELEMENTS // int(t.shape[0])]
        else:
            shape = list(t.shape)
        n = 4
        for d in shape:
            n *= d
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    body = _header_bytes(header)
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body)
    os.truncate(p, 8 + len(body) + pos)


def _edit(base: str, fn: Callable[[dict, Sources], dict]) -> Callable[[Path, Sources], None]:
    def make(p: Path, src: Sources) -> None:
        tensors = {k: v.clone() for k, v in getattr(src, base).items()}
        _save(p, fn(tensors, src), src.metadata)

    return make


def _mod(src: Sources, base: str = "locon", suffix: str = "lora_up.weight") -> str:
    return src.module(getattr(src, base), suffix)


def _unknown_algorithm(t: dict, src: Sources) -> dict:
    t["lycoris_x_embedder.weird_w1"] = torch.randn(4, 4)
    t["lycoris_x_embedder.weird_w2"] = torch.randn(4, 4)
    return t


def _unknown_extra_key(t: dict, src: Sources) -> dict:
    t[f"{_mod(src)}.lora_extra.weight"] = torch.randn(2, 2)
    return t


def _loose_key(t: dict, src: Sources) -> dict:
    t["network_alpha"] = torch.tensor(4.0)
    return t


def _lokr_without_w2(t: dict, src: Sources) -> dict:
    m = _mod(src, "lokr", "lokr_w1")
    for k in [k for k in t if k.startswith(m + ".lokr_w2")]:
        del t[k]
    return t


def _up_without_down(t: dict, src: Sources) -> dict:
    del t[f"{_mod(src)}.lora_down.weight"]
    return t


def _loha_partner_only(t: dict, src: Sources) -> dict:
    t["lycoris_x_embedder.hada_w1_b"] = torch.randn(4, 64)
    t["lycoris_x_embedder.hada_w2_b"] = torch.randn(4, 64)
    return t


def _factors_disagree(t: dict, src: Sources) -> dict:
    m = _mod(src)
    up = t[f"{m}.lora_up.weight"]
    t[f"{m}.lora_up.weight"] = torch.randn(up.shape[0], up.shape[1] + 1)
    return t


def _wrong_target_shape(t: dict, src: Sources) -> dict:
    m = _mod(src)
    down = t[f"{m}.lora_down.weight"]
    t[f"{m}.lora_down.weight"] = torch.randn(down.shape[0], down.shape[1] + 3)
    return t


def _lokr_1d(t: dict, src: Sources) -> dict:
    m = _mod(src, "lokr", "lokr_w1")
    t[f"{m}.lokr_w1"] = torch.randn(16)
    return t


def _other_family(t: dict, src: Sources) -> dict:
    return {k: v.clone() for k, v in src.sd15_locon.items()}


def _mostly_other_family(t: dict, src: Sources) -> dict:
    out = dict(t)
    out.update({k: v.clone() for k, v in src.sd15_locon.items()})
    return out


def _nan(t: dict, src: Sources) -> dict:
    m = _mod(src)
    t[f"{m}.lora_up.weight"][0, 0] = float("nan")
    return t


def _inf(t: dict, src: Sources) -> dict:
    m = _mod(src, "lokr", "lokr_w1")
    t[f"{m}.lokr_w1"][0, 0] = float("inf")
    return t


def _int_dtype(t: dict, src: Sources) -> dict:
    m = _mod(src)
    t[f"{m}.lora_up.weight"] = (t[f"{m}.lora_up.weight"] * 100).to(torch.int32)
    return t


def _dtype(dtype: torch.dtype) -> Callable[[dict, Sources], dict]:
    def fn(t: dict, src: Sources) -> dict:
        return {k: v.to(dtype) for k, v in t.items()}

    return fn


def _bad_config_metadata(p: Path, src: Sources) -> None:
    _save(p, src.locon, {"lycoris_config": "{this is not json", "ss_note": "x"})


def _big_metadata(p: Path, src: Sources) -> None:
    _save(p, src.locon, {**src.metadata, "ss_tag_frequency": "y" * (8 * 1024 * 1024)})


# ------------------------------------------------------------------------------------------------ the catalogue
def catalogue(src: Sources | None = None) -> list[Case]:
    """Every case. Module/key names depend on the good files: pass ``src`` to get them filled in (``names``)."""
    m_locon = _mod(src) if src else "?"
    m_lokr = _mod(src, "lokr", "lokr_w1") if src else "?"
    ff = "lycoris_x_embedder"
    last = _last_key(_good_bytes(src)) if src else "?"
    cases = [
        # ---- damaged safetensors
        Case("truncated_data", "truncated_data.safetensors", _truncated_data, "AdapterFormatError",
             ("fall outside", "truncated"), names=(last,), fix="download or copy it again"),
        Case("truncated_header", "truncated_header.safetensors", _truncated_header, "AdapterFormatError",
             ("exceeds the file size",), fix="download or copy it again"),
        Case("empty_file", "empty_file.safetensors", _empty, "AdapterFormatError", ("too short",),
             fix="download or copy it again"),
        Case("header_larger_than_file", "header_larger.safetensors", _header_larger, "AdapterFormatError",
             ("header length 1000000000 bytes exceeds the file size",), fix="download or copy it again"),
        Case("corrupt_header", "corrupt_header.safetensors", _corrupt_header, "AdapterFormatError",
             ("not valid JSON",), fix="re-export it"),
        Case("header_not_object", "header_list.safetensors", _header_list, "AdapterFormatError",
             ("not a JSON object",), fix="re-export the file"),
        Case("unknown_dtype", "unknown_dtype.safetensors", _unknown_dtype, "AdapterFormatError",
             ("unknown dtype 'F7'",), names=(last,), fix="standard dtype"),
        Case("overlapping_tensors", "overlapping.safetensors", _overlapping, "AdapterFormatError",
             ("overlapping or gapped",), names=("lycoris_overlap.",), fix="re-export it"),
        Case("trailing_data", "trailing.safetensors", _trailing, "AdapterFormatError", ("trailing data",),
             fix="re-export it"),
        Case("metadata_not_string", "metadata_not_string.safetensors", _metadata_not_string, "AdapterFormatError",
             ("holds a dict, not a string",), names=("lycoris_config",), fix="string metadata"),
        Case("metadata_not_object", "metadata_list.safetensors", _metadata_not_object, "AdapterFormatError",
             ("'__metadata__' is not a JSON object",), fix="re-export the file"),
        Case("huge_header", "huge_header.safetensors", _huge_header, "AdapterFormatError",
             ("byte limit",), fix="re-export it", sparse=True),
        Case("absurd_declared_shape", "absurd_shape.safetensors", _absurd_shape, "AdapterFormatError",
             ("needs 18446744073709551616",), names=("lora_up.weight",), fix="re-export it"),
        Case("absurd_tensor_for_target", "absurd_tensor.safetensors", _absurd_tensor, "ShapeMismatchError",
             ("refused before reading it", "largest weight"), names=(f"{m_locon}.lora_down.weight",),
             fix="load it on the model it was trained for", sparse=True),
        # ---- pickles (never unpickled, .ckpt/.pt/.bin never even opened)
        Case("pickle_ckpt", "pickle.ckpt", _pickle_ext, "AdapterFormatError", ("'.ckpt' files are pickles",),
             fix="convert it to .safetensors"),
        Case("pickle_pt", "pickle.pt", _pickle_ext, "AdapterFormatError", ("'.pt' files are pickles",),
             fix="convert it to .safetensors"),
        Case("pickle_bin", "pickle.bin", _pickle_ext, "AdapterFormatError", ("'.bin' files are pickles",),
             fix="convert it to .safetensors"),
        Case("pickle_renamed", "pickle_renamed.safetensors", _pickle_renamed, "AdapterFormatError",
             ("pickle header",), fix="convert it to .safetensors"),
        Case("plain_pickle_renamed", "plain_pickle.safetensors", _plain_pickle_renamed, "AdapterFormatError",
             ("pickle header",), fix="convert it to .safetensors"),
        Case("zip_checkpoint_renamed", "zip_renamed.safetensors", _zip_renamed, "AdapterFormatError",
             ("zip archive",), fix="convert it to .safetensors"),
        # ---- LyCORIS key sets
        Case("unknown_algorithm_keys", "unknown_algo.safetensors", _edit("locon", _unknown_algorithm),
             "AdapterFormatError", ("unknown key set", "weird_w1"), names=(ff,), fix="re-export it"),
        Case("unknown_extra_key", "extra_key.safetensors", _edit("locon", _unknown_extra_key),
             "AdapterFormatError", ("does not use", "lora_extra.weight"), names=(m_locon,), fix="re-export it"),
        Case("loose_key", "loose_key.safetensors", _edit("locon", _loose_key), "AdapterFormatError",
             ("are not '<module>.<tensor>' LyCORIS keys",), names=("network_alpha",), fix="this is not a"),
        Case("lokr_w1_without_w2", "lokr_no_w2.safetensors", _edit("lokr", _lokr_without_w2),
             "AdapterFormatError", ("is missing", "lokr_w2 (or lokr_w2_a + lokr_w2_b)"), names=(m_lokr,),
             fix="re-export it"),
        Case("lora_up_without_down", "up_no_down.safetensors", _edit("locon", _up_without_down),
             "AdapterFormatError", ("is missing", "lora_down.weight"), names=(m_locon,), fix="re-export it"),
        Case("loha_partners_without_detection_key", "loha_partner.safetensors",
             _edit("locon", _loha_partner_only), "AdapterFormatError",
             ("not the detection key", "hada_w1_a"), names=(ff,), fix="re-export it"),
        Case("factors_disagree", "factors_disagree.safetensors", _edit("locon", _factors_disagree),
             "AdapterFormatError", ("does not match lora_down.weight",), names=(m_locon, "lora_up.weight"),
             fix="re-export it"),
        Case("lokr_factor_1d", "lokr_1d.safetensors", _edit("lokr", _lokr_1d), "AdapterFormatError",
             ("not 2-D",), names=(m_lokr, "lokr_w1"), fix="re-export it"),
        # ---- wrong target
        Case("wrong_shape_for_target", "wrong_shape.safetensors", _edit("locon", _wrong_target_shape),
             "ShapeMismatchError", ("expects a target weight of shape",), names=(m_locon, "lora_down.weight"),
             fix="load it on the base model it was trained on"),
        Case("other_model_family", "other_family.safetensors", _edit("locon", _other_family),
             "NoMatchingKeysError", ("matches this flux2 model",), names=("lycoris_",),
             fix="load it on the model it was trained for"),
        Case("mostly_other_model", "mostly_other.safetensors", _edit("locon", _mostly_other_family),
             "NoMatchingKeysError", ("match nothing in this flux2 model",), names=("lycoris_",),
             fix="load it on that model"),
        # ---- values
        Case("nan_values", "nan.safetensors", _edit("locon", _nan), "AdapterFormatError",
             ("NaN or Inf",), names=(f"{m_locon}.lora_up.weight",), fix="use an earlier checkpoint"),
        Case("inf_values", "inf.safetensors", _edit("lokr", _inf), "AdapterFormatError",
             ("NaN or Inf",), names=(f"{m_lokr}.lokr_w1",), fix="use an earlier checkpoint"),
        Case("integer_weights", "int_weights.safetensors", _edit("locon", _int_dtype), "AdapterFormatError",
             ("has dtype int32",), names=(m_locon, "lora_up.weight"), fix="re-export it"),
        # ---- must load and work
        Case("fp16_file", "fp16.safetensors", _edit("locon", _dtype(torch.float16)), ok=True),
        Case("bf16_file", "bf16.safetensors", _edit("locon", _dtype(torch.bfloat16)), ok=True),
        Case("fp8_e4m3_file", "fp8_e4m3.safetensors", _edit("locon", _dtype(torch.float8_e4m3fn)), ok=True),
        Case("fp8_e5m2_lokr_file", "fp8_e5m2_lokr.safetensors", _edit("lokr", _dtype(torch.float8_e5m2)),
             ok=True, extra={"base": "lokr"}),
        Case("config_metadata_not_json", "bad_config_meta.safetensors", _bad_config_metadata, ok=True,
             expect=("warning", "'lycoris_config' is not valid JSON", "ignored"),
             note="warned on the node, not refused: the weights are fine, only the T-LoRA defaults come from "
                  "the config"),
        Case("big_metadata_under_limit", "big_metadata.safetensors", _big_metadata, ok=True,
             note="8 MiB of metadata loads (under the 100 MiB header limit); the report does not echo it"),
    ]
    return cases


def build_sources(tmp: Path) -> Sources:
    """The good files (LoCon and LoKr on the flux2 twin, a LoCon on the sd15 twin) made by lycoris-lora."""
    from lyco_testkit import twins
    from lyco_testkit.lycoris_files import config_for, make_lycoris, read_lycoris_file

    tmp.mkdir(parents=True, exist_ok=True)
    flux = twins.build_diffusers_model(FAMILY, 0)
    locon = make_lycoris(flux, tmp / "good_locon.safetensors", config_for("locon", FAMILY), seed=3, weight_std=0.2)
    lokr = make_lycoris(flux, tmp / "good_lokr.safetensors", config_for("lokr", FAMILY), seed=4, weight_std=0.2)
    sd15 = make_lycoris(twins.build_diffusers_model("sd15", 0), tmp / "sd15_locon.safetensors",
                        config_for("locon", "sd15", apply_preset={"target_module": ["Attention"]}), seed=5)
    locon_t, meta = read_lycoris_file(locon.path)
    lokr_t, _ = read_lycoris_file(lokr.path)
    sd15_t, _ = read_lycoris_file(sd15.path)
    extra = {}
    for algo, seed in (("tlora", 6), ("loha", 7)):
        art = make_lycoris(flux, tmp / f"good_{algo}.safetensors", config_for(algo, FAMILY), seed=seed,
                           weight_std=0.2)
        extra[algo] = read_lycoris_file(art.path)
    return Sources(locon=locon_t, lokr=lokr_t, sd15_locon=sd15_t, metadata=meta, extra=extra)


def build_catalogue(folder: Path, src: Sources) -> list[Case]:
    """Write every case's file into ``folder`` (as ``rel_<filename>``) and return the cases."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = catalogue(src)
    for c in cases:
        path = folder / c.path_name
        if path.exists() or path.is_symlink():
            path.unlink()
        c.make(path, src)
    return cases


def good_files(folder: Path, src: Sources) -> dict[str, str]:
    """The good flux2 files written into ``folder``: ``{"locon"|"lokr"|"tlora"|"loha": "rel_good_<algo>...."}``."""
    out = {}
    files = [("locon", src.locon, src.metadata), ("lokr", src.lokr, src.metadata)]
    files += [(name, t, meta) for name, (t, meta) in src.extra.items()]
    for name, tensors, meta in files:
        path = folder / f"{PREFIX}good_{name}.safetensors"
        _save(path, tensors, meta)
        out[name] = path.name
    return out
