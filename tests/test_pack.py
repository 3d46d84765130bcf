"""Packed formats v2: bit-exact round trips, pruned zeros kept, N:M checks, bytes per weight
as docs/formats.md computes them, and a packed artifact that refuses altered files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tasks.formats.artifact import load_metadata, load_packed_tensors, save_packed
from tasks.formats.packing import (BITMASK_CHUNK, FORMAT_VERSION, FORMATS, LayerFormat, bytes_per_weight, pack_weight,
                                   unpack_bits, unpack_weight)
from tasks.pruning.patterns import NM, Unstructured, mask_from_scores
from tasks.quantization.grid import QuantSpec, rtn

FLOAT_FORMATS = [f for f, c in FORMATS.items() if c.code_bits is None]
INT_FORMATS = [f for f, c in FORMATS.items() if c.code_bits is not None]


def gaussian(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def setup(fmt: str, cols: int, nm: tuple[int, int] = (2, 4), seed: int = 0):
    """A random weight (no zeros) and the mask its format's sparsity calls for."""
    W = gaussian(7, cols, seed)
    scores = torch.rand(W.shape, generator=torch.Generator().manual_seed(seed + 1))
    if fmt.startswith("nm"):
        return W, mask_from_scores(scores, NM(*nm))
    if fmt.startswith("bitmask"):
        return W, mask_from_scores(scores, Unstructured(0.5))
    return W, scores < 0.3  # dense formats store pruned zeros like any value


def widths(fmt: str) -> list[int]:
    return [40] if fmt.startswith("nm") else [37, 129]


@pytest.mark.parametrize("fmt", FLOAT_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_float_formats_round_trip_bit_exact(fmt, dtype, nm):
    for cols in widths(fmt):
        W, mask = setup(fmt, cols, nm)
        layer, tensors = pack_weight(W, fmt, mask=mask, nm=nm, dtype=dtype)
        out = unpack_weight(tensors, layer)
        assert out.dtype == dtype and out.shape == W.shape
        assert torch.equal(out, W.to(dtype).masked_fill(mask, 0))
        assert (out[mask] == 0).all()


@pytest.mark.parametrize("fmt", INT_FORMATS)
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int_formats_round_trip_bit_exact(fmt, group_size, symmetric):
    bits = FORMATS[fmt].code_bits
    for cols in widths(fmt):
        W, mask = setup(fmt, cols)
        q = rtn(W, QuantSpec(bits, group_size, symmetric), mask)
        layer, tensors = pack_weight(None, fmt, mask=mask, quantized=q, nm=(2, 4))
        for dtype in (torch.float32, torch.float16):
            assert torch.equal(unpack_weight(tensors, layer, dtype), q.dequantize(dtype))
        assert (unpack_weight(tensors, layer)[mask] == 0).all()


@pytest.mark.parametrize("bits", [2, 3])
def test_narrow_codes_fit_the_int4_formats(bits):
    W, mask = setup("nm-int4", 40)
    q = rtn(W, QuantSpec(bits, 32, False), mask)
    for fmt in ("int4", "nm-int4", "bitmask-int4"):
        layer, tensors = pack_weight(W, fmt, mask=mask, quantized=q, nm=(2, 4))
        assert layer.bits == bits and torch.equal(unpack_weight(tensors, layer, torch.float32), q.dequantize())


@pytest.mark.parametrize("fmt", FORMATS)
def test_without_a_mask_zeros_decide_what_is_kept(fmt):
    W, mask = setup(fmt, 40)
    W = W.masked_fill(mask, 0)
    q = rtn(W, QuantSpec(FORMATS[fmt].code_bits or 8, 32, False), mask)
    layer, tensors = pack_weight(W, fmt, quantized=q, nm=(2, 4))
    expected = q.dequantize(torch.float16) if FORMATS[fmt].code_bits else W.half()
    assert torch.equal(unpack_weight(tensors, layer), expected)


@pytest.mark.parametrize("fmt", ["nm", "nm-int4"])
def test_nm_group_with_a_kept_zero_still_stores_n_increasing_positions(fmt):
    W = gaussian(2, 8)
    W[0, :4] = torch.tensor([0.0, 0.0, 0.0, 1.5])  # one nonzero in the group: pad with column 0
    W[0, 4:] = torch.tensor([0.0, 2.0, 0.0, -1.0])
    W[1] = torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    q = rtn(W, QuantSpec(4, -1, False))
    layer, tensors = pack_weight(W, fmt, quantized=q, nm=(2, 4))
    positions = [[b >> s & 3 for b in row for s in (0, 2, 4, 6)] for row in tensors["indices"].tolist()]
    assert positions == [[0, 3, 1, 3], [0, 1, 0, 1]]
    expected = q.dequantize(torch.float16) if fmt == "nm-int4" else W.half()
    assert torch.equal(unpack_weight(tensors, layer), expected)


def test_nm_packing_names_the_row_and_group_that_break_the_pattern():
    W, mask = setup("nm", 40)
    mask[3, 20:24] = False  # row 3, group 5 keeps all 4
    with pytest.raises(ValueError, match=r"not 2:4 sparse: row 3, group 5 \(cols 20..23\) keeps 4 of 4"):
        pack_weight(W, "nm", mask=mask, nm=(2, 4))
    with pytest.raises(ValueError, match="row 0, group 0"):
        pack_weight(gaussian(2, 8), "nm", nm=(2, 4))  # dense input, no mask
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_weight(gaussian(2, 10), "nm", nm=(2, 4))
    with pytest.raises(ValueError, match="0 < n < m"):
        pack_weight(gaussian(2, 8), "nm")


def test_bad_arguments_are_named():
    W = gaussian(2, 8)
    with pytest.raises(ValueError, match="unknown packed format 'int5'"):
        pack_weight(W, "int5")
    with pytest.raises(ValueError, match="pass quantized"):
        pack_weight(W, "int4")
    with pytest.raises(ValueError, match="at most 4-bit"):
        pack_weight(W, "int4", quantized=rtn(W, QuantSpec(8, -1, False)))
    with pytest.raises(ValueError, match="missing tensors"):
        layer, tensors = pack_weight(W, "bitmask")
        unpack_weight({"values": tensors["values"]}, layer)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.startswith("bitmask")])
def test_bitmask_chunks_start_on_16_byte_boundaries(fmt):
    """Version 2: chunk j of row n starts at byte 16·chunk_offsets[n, j] of values and holds the kept
    entries of columns [512j, 512(j+1)) in column order, then zeros up to the next chunk."""
    bits = FORMATS[fmt].code_bits
    cols = 2 * BITMASK_CHUNK + 77  # three chunks, the last one short
    W, mask = setup(fmt, cols)
    mask[2] = True  # an empty row: its chunks take no bytes
    q = rtn(W, QuantSpec(bits, 128, False), mask) if bits else None
    layer, tensors = pack_weight(W, fmt, mask=mask, quantized=q, dtype=torch.bfloat16)
    offsets = tensors["chunk_offsets"]
    assert offsets.dtype == torch.int32 and offsets.shape == (7, 3)
    values = tensors["values"]
    assert values.numel() * values.element_size() % 16 == 0
    per = 128 // (bits or 16)  # entries per 16 bytes
    entries = W.bfloat16() if bits is None else q.codes
    flat = unpack_bits(values, 4) if bits == 4 else values  # one entry per element
    kept = ~mask
    for n in range(7):
        for j in range(3):
            chunk = slice(j * BITMASK_CHUNK, (j + 1) * BITMASK_CHUNK)
            count = int(kept[n, chunk].sum())
            start = int(offsets[n, j]) * per
            assert torch.equal(flat[start:start + count].to(entries.dtype), entries[n, chunk][kept[n, chunk]])
            follows = offsets.reshape(-1)[n * 3 + j + 1] * per if n * 3 + j + 1 < 21 else flat.numel()
            end = start + -(-count // per) * per  # padded to 16 bytes, and the next chunk starts there
            assert end == follows and (flat[start + count:end] == 0).all()
    assert torch.equal(unpack_weight(tensors, layer, torch.float32),
                       W.bfloat16().float().masked_fill(mask, 0) if bits is None else q.dequantize())
    broken = dict(tensors, chunk_offsets=offsets[:, :2].contiguous())
    with pytest.raises(ValueError, match=r"chunk_offsets \(7, 2\) .* do not match the mask: \(7, 3\) chunks of 512"):
        unpack_weight(broken, layer)


DOC_BYTES_PER_WEIGHT = {  # docs/formats.md, N=256, K=1024, g=128, 2:4 or 50% unstructured
    "dense": 2.0,
    "int8": 1 + 3 / 128,
    "int4": 0.5 + 3 / 128,
    "nm": 1.125,
    "nm-int8": 0.5 + 0.125 + 3 / 128,
    "nm-int4": 0.25 + 0.125 + 3 / 128,
    # an int32 offset and ≈ 7.5 bytes of padding (half of 16, less half an entry) per chunk of 512
    "bitmask": 0.125 + 1.0 + (4 + 7) / 512,
    "bitmask-int8": 0.125 + 0.5 + 3 / 128 + (4 + 7.5) / 512,
    "bitmask-int4": 0.125 + 0.25 + 3 / 128 + (4 + 7.75) / 512,
}


def test_bytes_per_weight_match_the_documented_arithmetic():
    W = gaussian(256, 1024)
    scores = W.abs()
    masks = {"nm": mask_from_scores(scores, NM(2, 4)), "bitmask": mask_from_scores(scores, Unstructured(0.5))}
    measured = {}
    for fmt, codec in FORMATS.items():
        mask = masks.get(fmt.split("-")[0])
        q = rtn(W, QuantSpec(codec.code_bits, 128, False), mask) if codec.code_bits else None
        layer, tensors = pack_weight(W, fmt, mask=mask, quantized=q, nm=(2, 4))
        measured[fmt] = bytes_per_weight(tensors, layer.shape)
        assert measured[fmt] == pytest.approx(DOC_BYTES_PER_WEIGHT[fmt], rel=0.01), fmt
    assert measured["nm-int4"] <= 0.45 and measured["bitmask-int4"] <= 0.45


# ---------------------------------------------------------------- artifact


def some_layers():
    layers = {}
    for i, fmt in enumerate(FORMATS):
        W, mask = setup(fmt, 40, seed=i)
        q = rtn(W, QuantSpec(FORMATS[fmt].code_bits or 8, 32, i % 2 == 0), mask)
        layers[f"model.layers.{i}.mlp.up_proj"] = pack_weight(W, fmt, mask=mask, quantized=q, nm=(2, 4))
    return layers


def test_artifact_round_trip_across_shards(tmp_path):
    layers = some_layers()
    out = save_packed(tmp_path / "packed", layers, {"model": "tiny"}, max_shard_bytes=600)
    meta = load_metadata(out)
    assert meta["version"] == FORMAT_VERSION == 2 and meta["model"] == "tiny" and len(meta["files"]) > 1
    loaded = load_packed_tensors(out)
    assert loaded.keys() == layers.keys()
    for name, (layer, tensors) in layers.items():
        got_layer, got = loaded[name]
        assert got_layer == layer and got.keys() == tensors.keys()
        assert all(torch.equal(got[k], tensors[k]) and got[k].dtype == tensors[k].dtype for k in tensors)
        assert torch.equal(unpack_weight(got, got_layer), unpack_weight(tensors, layer))
    assert [p.name for p in tmp_path.iterdir()] == ["packed"]  # no temporary siblings left


def test_layer_format_survives_json():
    layer, _ = some_layers()["model.layers.5.mlp.up_proj"]
    assert LayerFormat.from_dict(json.loads(json.dumps(dataclasses.asdict(layer)))) == layer


def test_save_replaces_atomically_and_a_failed_save_changes_nothing(tmp_path):
    layers = some_layers()
    out = save_packed(tmp_path / "packed", layers, {"run": 1})
    save_packed(out, layers, {"run": 2})
    assert load_metadata(out)["run"] == 2
    with pytest.raises(TypeError):
        save_packed(out, layers, {"run": object()})  # not JSON: fails after the shards are written
    assert load_metadata(out)["run"] == 2 and len(load_packed_tensors(out)) == len(layers)
    assert [p.name for p in tmp_path.iterdir()] == ["packed"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_altered_or_truncated_files_are_rejected_by_name(tmp_path, damage):
    out = save_packed(tmp_path / "packed", some_layers())
    target = out / "model.safetensors"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) - 10 :]
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 does not match metadata\.json; the file is altered or truncated"):
        load_packed_tensors(out)


def test_missing_file_and_unknown_version_are_rejected(tmp_path):
    out = save_packed(tmp_path / "packed", some_layers())
    meta_path = out / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(ValueError, match=r"metadata\.json: prunepipe-packed version 3 is not supported; this prunepipe reads version 2"):
        load_packed_tensors(out)
    meta_path.write_text(json.dumps(meta)[:-20])
    with pytest.raises(ValueError, match=r"metadata\.json: not valid JSON"):
        load_packed_tensors(out)
    meta_path.write_text(json.dumps(meta))
    (out / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors: file listed in metadata\.json is missing"):
        load_packed_tensors(out)


def test_a_version_1_artifact_asks_for_a_new_pack_in_one_line(tmp_path):
    """Version 1 stored bitmask values unchunked: reading it as version 2 would be wrong, so say what to do."""
    out = save_packed(tmp_path / "packed", some_layers())
    meta = json.loads((out / "metadata.json").read_text())
    (out / "metadata.json").write_text(json.dumps({**meta, "version": 1}))
    for load in (load_metadata, load_packed_tensors):
        with pytest.raises(ValueError) as err:
            load(out)
        assert "\n" not in str(err.value)
        assert str(err.value).endswith("prunepipe-packed version 1 is older than the version 2 this prunepipe reads "
                                       "(docs/formats.md); re-run `dvc repro pack`")
