# SPDX-License-Identifier: GPL-3.0-or-later
"""read_lycoris_file / read_metadata_only: good files, sidecar config, and every refusal naming file and key."""
from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from lycoris_core.errors import AdapterFormatError
from lycoris_core.safetensors_file import read_lycoris_file, read_metadata_only


def _tensors():
    return {"lycoris_lin.lora_up.weight": torch.randn(4, 2), "lycoris_lin.lora_down.weight": torch.randn(2, 3),
            "lycoris_lin.alpha": torch.tensor(1.0, dtype=torch.bfloat16)}


def _raw(path, header: dict, data: bytes = b"", declared: int | None = None):
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if declared is None else declared) + body + data)
    return path


def test_reads_tensors_metadata_and_config(tmp_path):
    p = tmp_path / "a.safetensors"
    save_file(_tensors(), p, {"lycoris_config": json.dumps({"algo": "lora", "linear_dim": 2}), "global_step": "7"})
    f = read_lycoris_file(p)
    assert set(f.tensors) == set(_tensors())
    assert f.tensors["lycoris_lin.alpha"].dtype == torch.bfloat16
    assert f.config == {"algo": "lora", "linear_dim": 2} and f.config_source == "metadata"
    assert f.metadata["global_step"] == "7"
    assert read_metadata_only(p)["global_step"] == "7"


def test_sidecar_config(tmp_path):
    p = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(_tensors(), p)
    assert read_lycoris_file(p).config is None
    (tmp_path / "lycoris_config.json").write_text(json.dumps({"algo": "tlora", "tlora_min_rank": 2}))
    f = read_lycoris_file(p)
    assert f.config["tlora_min_rank"] == 2 and f.config_source.startswith("sidecar:")


def test_non_json_metadata_falls_back(tmp_path, caplog):
    p = tmp_path / "b.safetensors"
    save_file(_tensors(), p, {"lycoris_config": "{not json"})
    with caplog.at_level("WARNING"):
        f = read_lycoris_file(p)
    assert f.config is None and f.config_source == "none"
    assert any("lycoris_config" in w for w in f.warnings)
    assert "lycoris_config" in caplog.text
    (tmp_path / "lycoris_config.json").write_text('{"algo": "lokr"}')
    assert read_lycoris_file(p).config == {"algo": "lokr"}


@pytest.mark.parametrize("ext", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_extensions_refused(tmp_path, ext):
    p = tmp_path / f"model{ext}"
    p.write_bytes(b"whatever")
    with pytest.raises(AdapterFormatError, match=r"convert it to \.safetensors") as e:
        read_lycoris_file(p)
    assert str(p) in str(e.value)


def test_pickle_magic_refused(tmp_path):
    p = tmp_path / "renamed.safetensors"
    p.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(AdapterFormatError, match="pickle") as e:
        read_lycoris_file(p)
    assert "renamed.safetensors" in str(e.value) and ".safetensors" in str(e.value)
    z = tmp_path / "zip.safetensors"
    z.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(AdapterFormatError, match="zip"):
        read_metadata_only(z)


def test_truncated_file(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(_tensors(), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-10])
    with pytest.raises(AdapterFormatError) as e:
        read_lycoris_file(cut)
    msg = str(e.value)
    assert "cut.safetensors" in msg and "lycoris_lin." in msg and "truncated" in msg
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01\x02")
    with pytest.raises(AdapterFormatError, match="too short"):
        read_lycoris_file(tiny)


def test_header_larger_than_file(tmp_path):
    p = _raw(tmp_path / "big.safetensors", {}, declared=10_000)
    with pytest.raises(AdapterFormatError, match="exceeds the file size") as e:
        read_metadata_only(p)
    assert "big.safetensors" in str(e.value)


def test_header_not_json_and_bad_entries(tmp_path):
    p = tmp_path / "nj.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{oops" + b"\0" * 8)
    with pytest.raises(AdapterFormatError, match="not valid JSON"):
        read_lycoris_file(p)
    bad_dtype = _raw(tmp_path / "dt.safetensors", {"m.alpha": {"dtype": "F7", "shape": [], "data_offsets": [0, 4]}},
                     b"\0" * 4)
    with pytest.raises(AdapterFormatError, match="'m.alpha'.*unknown dtype"):
        read_lycoris_file(bad_dtype)
    outside = _raw(tmp_path / "off.safetensors",
                   {"m.lora_up.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(AdapterFormatError, match="'m.lora_up.weight' data_offsets"):
        read_lycoris_file(outside)
    wrong_size = _raw(tmp_path / "ws.safetensors",
                      {"m.lora_up.weight": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16)
    with pytest.raises(AdapterFormatError, match="'m.lora_up.weight' holds 16 bytes"):
        read_lycoris_file(wrong_size)


def test_missing_file(tmp_path):
    with pytest.raises(AdapterFormatError, match="cannot read"):
        read_lycoris_file(tmp_path / "nope.safetensors")


def test_progress_callback_reports_bytes_and_reads_the_same(tmp_path):
    tensors = {f"lycoris_m{i}.lora_up.weight": torch.randn(8, 4) for i in range(3)}
    path = tmp_path / "p.safetensors"
    save_file(tensors, str(path))
    calls = []
    with_progress = read_lycoris_file(str(path), progress=lambda done, total: calls.append((done, total)))
    plain = read_lycoris_file(str(path))
    assert len(calls) == 3 and calls[-1][0] == calls[-1][1] == 3 * 8 * 4 * 4
    assert all(torch.equal(with_progress.tensors[k], plain.tensors[k]) for k in tensors)
