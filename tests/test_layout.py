"""Chunk/block layout and the storage-keyword funnel of :mod:`mlarray.layout`."""

from __future__ import annotations

import json
import math
import os

import blosc2
import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import MetaValidationError, MLArrayError
from mlarray.layout import (
    DEFAULT_CPARAMS,
    DEFAULT_DPARAMS,
    DEFAULT_PATCH_SIZE,
    DEFAULT_SEG_CPARAMS,
    LayoutError,
    StorageOptions,
    StorageRequest,
    comp_blosc2_params,
    normalize_cparams,
    normalize_dparams,
    resolve_storage,
    usable_cores,
)
from tests._children import run_python

L1, L3, SAFETY = 32768, 1441792, 0.8


# ----------------------------------------------------------------------------- reference cases

# (image, patch, bytes per pixel) -> (chunks, blocks), as the reference package 0.0.54 gives them
REFERENCE_CASES = [
    ((512, 512, 512), (192, 192, 192), 4, (54, 54, 80), (18, 18, 20)),
    ((2048, 2048), (192, 192), 4, (320, 320), (80, 80)),
    ((64, 80, 96), (192, 192, 192), 2, (64, 80, 96), (22, 24, 24)),
    ((48, 64, 64), (192, 192, 192), 1, (48, 64, 64), (28, 30, 30)),
    ((512, 512, 512), (192, 192, 192), 1, (84, 90, 150), (28, 30, 30)),
    ((512, 512, 512), (192, 192, 192), 2, (66, 72, 120), (22, 24, 24)),
    ((512, 512, 512), (192, 192, 192), 8, (42, 42, 80), (14, 14, 16)),
    ((512, 512, 512), (192, 192, 192), 3, (60, 80, 80), (20, 20, 20)),
    ((512, 512, 512), (64, 64, 64), 4, (54, 54, 80), (18, 18, 20)),
    ((512, 512, 512), (15, 15, 15), 4, (36, 36, 40), (18, 18, 20)),
    ((512, 512, 512), (3, 3, 3), 4, (18, 18, 20), (18, 18, 20)),
    ((512, 512), (64, 64), 4, (160, 160), (80, 80)),
    ((512, 512), (128, 128), 4, (240, 240), (80, 80)),
    ((512, 512), (50, 200), 4, None, (40, 162)),
    ((512, 512, 512, 512), (192, 192, 192, 192), 4, (16, 16, 30, 30), (8, 8, 10, 10)),
    ((64, 64, 64, 64, 64), (32, 32, 32, 32, 32), 4, (8, 12, 12, 12, 18), (4, 6, 6, 6, 6)),
    ((10, 10, 10), (192, 192, 192), 4, (10, 10, 10), (10, 10, 10)),
    ((1, 512, 512), (192, 192, 192), 4, (1, 320, 320), (1, 80, 80)),
    ((5, 512, 512), (192, 192, 192), 4, (5, 216, 252), (5, 36, 36)),
    ((60, 512, 512), (192, 192, 192), 4, (60, 54, 80), (18, 18, 20)),
    ((512,), (192,), 4, (512,), (512,)),
]


@pytest.mark.parametrize(("image", "patch", "bpp", "chunks", "blocks"), REFERENCE_CASES)
def test_reference_cases(image, patch, bpp, chunks, blocks):
    chunk, block = comp_blosc2_params(image, patch, bytes_per_pixel=bpp)
    if chunks is not None:
        assert tuple(chunk) == chunks
    if blocks is not None:
        assert tuple(block) == blocks


# ----------------------------------------------------------------------------- invariants


def layout_cases():
    rng = np.random.default_rng(12345)
    cases = []
    for _ in range(400):
        ndim = int(rng.integers(1, 7))
        image = tuple(
            int(rng.choice([rng.integers(1, 40), rng.integers(1, 700)])) for _ in range(ndim)
        )
        mask = [bool(m) for m in rng.random(ndim) < 0.8]
        n_spatial = sum(mask)
        if n_spatial == 0 or rng.random() < 0.5:
            patch = [int(rng.choice([192, 128, 64, rng.integers(1, 400)]))] * max(n_spatial, 1)
        else:
            patch = [int(rng.integers(1, 400)) for _ in range(n_spatial)]
        if n_spatial == 0:
            patch = []
        bpp = int(rng.choice([1, 2, 4, 8, 16]))
        cases.append((image, tuple(patch), mask, bpp))
    return cases


@pytest.mark.parametrize(("image", "patch", "mask", "bpp"), layout_cases())
def test_layout_invariants(image, patch, mask, bpp):
    chunk, block = comp_blosc2_params(image, patch, spatial_axis_mask=mask, bytes_per_pixel=bpp)
    assert len(chunk) == len(block) == len(image)
    assert all(isinstance(v, int) for v in chunk + block)
    for c, b, n, m in zip(chunk, block, image, mask, strict=True):
        assert 1 <= b <= c <= n
        if not m:
            assert c == b == 1
        # a whole number of blocks, unless clipped to the image
        assert c % b == 0 or c == n
    if math.prod(block) > 1:
        assert math.prod(block) * bpp <= L1 * SAFETY
    if chunk != block:
        assert math.prod(chunk) * bpp <= L3 * SAFETY


@pytest.mark.parametrize("bpp", [1, 2, 4, 8])
def test_block_fills_most_of_l1_on_large_images(bpp):
    for ndim in range(1, 7):
        image = (100_000,) if ndim == 1 else (4096,) * ndim
        chunk, block = comp_blosc2_params(image, (192,) * ndim, bytes_per_pixel=bpp)
        assert 0.5 * L1 * SAFETY < math.prod(block) * bpp <= L1 * SAFETY
        assert math.prod(chunk) * bpp <= L3 * SAFETY


def test_patch_for_all_axes_equals_patch_for_spatial_axes():
    mask = [False, True, True, True]
    a = comp_blosc2_params((3, 100, 200, 300), (160, 96, 64), spatial_axis_mask=mask)
    b = comp_blosc2_params((3, 100, 200, 300), (7, 160, 96, 64), spatial_axis_mask=mask)
    assert a == b
    assert a[0][0] == a[1][0] == 1


def test_cache_sizes_scale_the_layout():
    small = comp_blosc2_params(
        (512, 512, 512), (192, 192, 192), l1_cache_size_per_core_in_bytes=8192
    )
    big = comp_blosc2_params(
        (512, 512, 512), (192, 192, 192), l3_cache_size_per_core_in_bytes=2**24
    )
    assert math.prod(small[1]) * 4 <= 8192 * SAFETY
    assert math.prod(big[0]) > math.prod(comp_blosc2_params((512,) * 3, (192,) * 3)[0])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"image_size": (3, 512, 512), "patch_size": (192, 192)}, LayoutError),
        ({"image_size": (512, 512), "patch_size": (192, 192, 192)}, LayoutError),
        (
            {"image_size": (512, 512), "patch_size": (192, 192), "spatial_axis_mask": [True]},
            LayoutError,
        ),
        ({"image_size": (0, 512), "patch_size": (192, 192)}, MetaValidationError),
        ({"image_size": (512, 512), "patch_size": (0, 192)}, MetaValidationError),
        (
            {"image_size": (512, 512), "patch_size": (192, 192), "bytes_per_pixel": 0},
            MetaValidationError,
        ),
    ],
)
def test_comp_blosc2_params_errors(kwargs, error):
    with pytest.raises(error):
        comp_blosc2_params(**kwargs)


def test_layout_error_is_a_runtime_error():
    assert issubclass(LayoutError, RuntimeError) and issubclass(LayoutError, ValueError)
    assert issubclass(LayoutError, MLArrayError)


# ----------------------------------------------------------------------------- resolve_storage


def test_default_patch_size():
    opts = resolve_storage((512, 512, 512), np.float32)
    assert opts.patch_size == (DEFAULT_PATCH_SIZE,) * 3
    assert opts.chunk_size == (54, 54, 80)
    assert opts.block_size == (18, 18, 20)
    assert opts.cparams == DEFAULT_CPARAMS
    assert opts.dparams == DEFAULT_DPARAMS


def test_patch_size_uses_dtype_itemsize():
    opts = resolve_storage((64, 80, 96), np.int16)
    assert opts.chunk_size == (64, 80, 96)
    assert opts.block_size == (22, 24, 24)
    opts = resolve_storage((48, 64, 64), np.uint8)
    assert opts.block_size == (28, 30, 30)


def test_patch_size_forms():
    mask = [False, True, True]
    assert resolve_storage((3, 64, 64), "f4", mask, patch_size=32).patch_size == (32, 32)
    assert resolve_storage((3, 64, 64), "f4", mask, patch_size=[16, 32]).patch_size == (16, 32)
    assert resolve_storage((3, 64, 64), "f4", mask, patch_size=(9, 16, 32)).patch_size == (16, 32)
    opts = resolve_storage((3, 64, 64), "f4", mask, patch_size=np.array([16, 32]))
    assert opts.patch_size == (16, 32)
    assert opts.chunk_size[0] == opts.block_size[0] == 1


def test_explicit_patch_size_with_chunk_and_block_is_refused_as_in_the_reference():
    with pytest.raises(LayoutError, match="patch_size"):
        resolve_storage((512, 512), "f4", patch_size=192, chunk_size=64, block_size=16)
    opts = resolve_storage((512, 512), "f4", chunk_size=64, block_size=16)  # patch "default"
    assert (opts.chunk_size, opts.block_size, opts.patch_size) == ((64, 64), (16, 16), None)


@pytest.mark.parametrize("patch_size", ["big", 0, -5, [192, 0, 1], 1.5, True])
def test_bad_patch_size(patch_size):
    with pytest.raises(MetaValidationError) as info:
        resolve_storage((10, 20, 30), "f4", patch_size=patch_size)
    assert info.value.field == "patch_size"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("patch_size", [[1, 2, 3, 4], [192], [8, 8]])
def test_patch_size_of_the_wrong_length_is_a_layout_error(patch_size):
    # the reference raises RuntimeError ("Patch size dimensionality must match ..."); a
    # LayoutError is one, and a ValueError as Blosc2's errors for chunks and blocks
    with pytest.raises(LayoutError, match=r"patch_size.*entries for 3 spatial axes") as info:
        resolve_storage((10, 20, 30), "f4", patch_size=patch_size)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)


def test_explicit_chunks_and_blocks():
    opts = resolve_storage(
        (100, 30, 40), "u2", patch_size=None, chunk_size=50, block_size=(10, 10, 100)
    )
    assert opts.patch_size is None
    assert opts.chunk_size == (50, 30, 40)
    assert opts.block_size == (10, 10, 40)
    opts = resolve_storage((100, 30), "u2", patch_size=None, chunk_size=[20, 20])
    assert opts.chunk_size == (20, 20)
    assert opts.block_size is None
    opts = resolve_storage((100, 30), "u2", patch_size=None)
    assert opts.chunk_size is None and opts.block_size is None


@pytest.mark.parametrize(
    ("chunk_size", "block_size", "error"),
    [
        (10, 20, LayoutError),
        ((10, 10), (5, 20), LayoutError),
        ((10, 10, 10), None, LayoutError),
        (None, (5,), LayoutError),
        (0, None, MetaValidationError),
        ((10, -1), None, MetaValidationError),
        ("10", None, MetaValidationError),
        ((10, 2.5), None, MetaValidationError),
    ],
)
def test_inconsistent_chunks_and_blocks(chunk_size, block_size, error):
    with pytest.raises(error):
        resolve_storage(
            (100, 100), "f4", patch_size=None, chunk_size=chunk_size, block_size=block_size
        )


def test_spatial_axis_mask_length_mismatch():
    with pytest.raises(LayoutError):
        resolve_storage((10, 20, 30), "f4", [True, True])


@pytest.mark.parametrize("shape", [(), (0,), (0, 10, 10), (5, 0)])
@pytest.mark.parametrize("patch_size", ["default", None])
def test_degenerate_shapes_let_blosc2_decide(shape, patch_size):
    opts = resolve_storage(shape, "f8", patch_size=patch_size, chunk_size=None)
    assert opts.chunk_size is None and opts.block_size is None
    blosc2.empty(shape, dtype="f8", cparams=opts.blosc2_cparams("f8"))


@pytest.mark.parametrize("shape", [(0,), (0, 10, 10), (5, 0)])
def test_degenerate_shapes_ignore_a_kept_layout(shape):
    # re-saving an empty array passes its own chunk shape, which holds a 0
    kept = [max(n, 0) for n in shape]
    opts = resolve_storage(shape, "f8", patch_size=None, chunk_size=kept, block_size=kept)
    assert opts.chunk_size is None and opts.block_size is None


def test_all_non_spatial_axes():
    opts = resolve_storage((3, 4), "f4", [False, False])
    assert opts.patch_size is None
    assert opts.chunk_size is None and opts.block_size is None


# ----------------------------------------------------------------------------- cparams


def test_normalize_cparams_defaults_and_copies():
    out = normalize_cparams(None)
    assert out == {"codec": 1, "clevel": 9}  # images: LZ4 level 9
    out["clevel"] = 1
    assert DEFAULT_CPARAMS == {"codec": 1, "clevel": 9}
    seg = normalize_cparams(None, is_seg=True)
    assert seg == {"codec": 2, "clevel": 9}  # label maps: LZ4HC level 9
    seg["clevel"] = 1
    assert DEFAULT_SEG_CPARAMS == {"codec": 2, "clevel": 9}
    # a given dict's unset keys come from Blosc2's defaults (ZSTD level 5), as in
    # blosc2.CParams and the reference package; the content's defaults only replace None
    assert normalize_cparams({"clevel": 3}, is_seg=True) == {"codec": 5, "clevel": 3}
    assert normalize_cparams({"codec": "lz4"}, is_seg=True) == {"codec": 1, "clevel": 5}


def test_resolve_storage_codec_by_content_and_all_cores_for_compression():
    img = resolve_storage((8, 9, 10), np.int16)
    seg = resolve_storage((8, 9, 10), np.uint8, is_seg=True)
    seg16 = resolve_storage((8, 9, 10), np.uint16, is_seg=True)
    assert img.cparams == {"codec": 1, "clevel": 9}
    assert seg.cparams == {"codec": 2, "clevel": 9, "filters": [0], "filters_meta": [0]}
    assert seg16.cparams == {"codec": 2, "clevel": 9}
    assert resolve_storage((4,), np.bool_).cparams["filters"] == [0]
    assert resolve_storage((4,), np.uint8, cparams={"filters": [2]}).cparams["filters"] == [2]
    # given cparams (a file's recorded ones on a re-save) are kept as they are
    assert resolve_storage((4,), np.uint8, cparams={"codec": 2, "clevel": 8}).cparams == {
        "codec": 2,
        "clevel": 8,
    }
    cp = img.blosc2_cparams(np.int16)
    assert cp.codec is blosc2.Codec.LZ4 and cp.clevel == 9
    assert cp.filters[-1] is blosc2.Filter.SHUFFLE
    assert cp.nthreads == usable_cores() == len(os.sched_getaffinity(0))
    assert "nthreads" not in img.cparams  # a machine property, not recorded
    given = resolve_storage((8, 9, 10), np.int16, cparams={"nthreads": 1})
    assert given.blosc2_cparams(np.int16).nthreads == 1


def test_normalize_cparams_dict_with_enums_and_names():
    out = normalize_cparams(
        {
            "codec": blosc2.Codec.ZSTD,
            "clevel": np.int64(5),
            "filters": [blosc2.Filter.BITSHUFFLE, 1],
            "splitmode": "never_split",
            "use_dict": False,
        }
    )
    assert out == {
        "codec": 5,
        "clevel": 5,
        "filters": [2, 1],
        "splitmode": blosc2.SplitMode.NEVER_SPLIT.value,
        "use_dict": False,
    }
    assert all(type(v) in (int, bool, list) for v in out.values())
    json.dumps(out)
    assert normalize_cparams({"codec": "zstd"})["codec"] == 5
    assert normalize_cparams({"clevel": 3}) == {"codec": 5, "clevel": 3}


@pytest.mark.parametrize(
    "given",
    [
        {"clevel": 9},
        {"clevel": 1},
        {"filters": [blosc2.Filter.BITSHUFFLE]},
        {"nthreads": 2},
        {"codec": blosc2.Codec.LZ4HC},
        {"codec": blosc2.Codec.ZLIB, "clevel": 3, "use_dict": False},
    ],
)
def test_a_cparams_dict_fills_what_it_leaves_out_as_blosc2_cparams_does(given):
    # as the reference package (its {"clevel": 9} is ZSTD 9): the dict and the CParams
    # object of one request are recorded alike and build the same Blosc2 parameters
    as_dict = normalize_cparams(given, is_seg=True)
    as_object = normalize_cparams(blosc2.CParams(**given), is_seg=True)
    want = blosc2.CParams(**given)
    assert (as_dict["codec"], as_dict["clevel"]) == (want.codec.value, want.clevel)
    # recorded alike (a dict also records the keys it names, defaults or not)
    named = set(given)
    assert {k: v for k, v in as_dict.items() if k not in named} == {
        k: v for k, v in as_object.items() if k not in named
    }
    for cp in (as_dict, as_object):
        built = resolve_storage((4, 5), np.int16, cparams=cp).blosc2_cparams(np.int16)
        assert (built.codec, built.clevel, built.filters) == (want.codec, want.clevel, want.filters)


def test_normalize_cparams_from_dataclass():
    out = normalize_cparams(blosc2.CParams(codec=blosc2.Codec.ZLIB, clevel=3, use_dict=True))
    assert out == {"codec": 4, "clevel": 3, "use_dict": True}
    # blosc2's own defaults are kept as blosc2 defaults, except codec and clevel
    assert normalize_cparams(blosc2.CParams()) == {"codec": 5, "clevel": 5}
    json.dumps(out)


@pytest.mark.parametrize(
    ("cparams", "match"),
    [
        ({"codex": 2}, "codex"),
        ({"chunks": (1, 2)}, "chunks"),
        ({"clevel": 12}, "clevel"),
        ({"clevel": True}, "clevel"),
        ({"codec": "nope"}, "codec"),
        ({"filters": 1}, "filters"),
        ({"filters": [1] * 7}, "filters"),
        ({"use_dict": 1}, "use_dict"),
        ({"nthreads": 2.0}, "nthreads"),
        ({"tuner": 99}, "tuner"),
        ({"tuner": 5}, "tuner"),
        ({"splitmode": 0}, "splitmode"),
        ({"filters_meta": [300]}, "filters_meta"),
        ([("codec", 1)], "dict"),
    ],
)
def test_normalize_cparams_rejects_bad_values(cparams, match):
    with pytest.raises(MetaValidationError, match=match) as info:
        normalize_cparams(cparams)
    assert info.value.field == "cparams"


def test_normalize_dparams():
    assert normalize_dparams(None) == {"nthreads": 1}
    assert normalize_dparams({"nthreads": 4}) == {"nthreads": 4}
    assert normalize_dparams(blosc2.DParams(nthreads=3)) == {"nthreads": 3}
    with pytest.raises(MetaValidationError, match="threads") as info:
        normalize_dparams({"threads": 2})
    assert info.value.field == "dparams"
    with pytest.raises(MetaValidationError):
        normalize_dparams({"nthreads": "2"})
    # any int, as Blosc2 takes it (below 1 runs one thread: StorageOptions.blosc2_dparams)
    for n in (0, -1):
        assert normalize_dparams({"nthreads": n}) == {"nthreads": n}
        asked = {"nthreads": n}
        opts = resolve_storage((8, 9, 10), np.int16, cparams=asked, dparams=asked)
        assert opts.blosc2_dparams().nthreads == 1 and opts.blosc2_cparams(np.int16).nthreads == 1


def test_normalize_dparams_repeated_calls_check_and_copy_every_time():
    """Data loaders pass the same dict on every open (its result is kept): each call
    still refuses bad values and returns its own dict."""
    first = normalize_dparams({"nthreads": 2})
    first["nthreads"] = 99
    assert normalize_dparams({"nthreads": 2}) == {"nthreads": 2}
    for bad in ({"nthreads": True}, {"nthreads": "-1"}, {"nthreads": 2.0}):
        for _ in range(2):
            with pytest.raises(MetaValidationError):
                normalize_dparams(bad)
    assert normalize_dparams({"nthreads": np.int64(3)}) == {"nthreads": 3}


def test_blosc2_parameter_objects():
    opts = resolve_storage(
        (10, 10),
        np.int16,
        cparams={"codec": 5, "clevel": 3, "filters": [2]},
        dparams={"nthreads": 2},
    )
    cp = opts.blosc2_cparams(np.int16)
    assert isinstance(cp, blosc2.CParams)
    assert cp.codec is blosc2.Codec.ZSTD
    assert cp.clevel == 3
    assert cp.typesize == 2
    assert cp.filters == [blosc2.Filter.BITSHUFFLE]
    dp = opts.blosc2_dparams()
    assert isinstance(dp, blosc2.DParams) and dp.nthreads == 2
    # the options object keeps plain values
    assert opts.cparams == {"codec": 5, "clevel": 3, "filters": [2]}


def test_storage_options_is_frozen():
    opts = resolve_storage((10,), "f4")
    assert isinstance(opts, StorageOptions)
    with pytest.raises(AttributeError):
        opts.chunk_size = (1,)


def test_storage_request_keeps_layout():
    request = StorageRequest(192, (8, 8), (4, 4), None, None, keep_layout=True)
    opts = resolve_storage((16, 16), "f4", **request.as_kwargs())
    assert opts.chunk_size == (8, 8) and opts.block_size == (4, 4) and opts.patch_size is None
    assert StorageRequest().as_kwargs()["patch_size"] == "default"


# ----------------------------------------------------------------------------- real blosc2

BLOSC2_SAMPLES = [
    ((512, 512, 20), np.float32, None, {}),
    ((64, 80, 96), np.int16, None, {}),
    ((48, 64, 64), np.uint8, None, {}),
    ((3, 40, 50, 60), np.float64, [False, True, True, True], {}),
    ((2, 3, 17, 33, 9), np.uint16, [False, False, True, True, True], {}),
    ((1000,), np.int32, None, {"cparams": {"codec": 5, "filters": [2]}}),
    ((7, 9), np.bool_, None, {"cparams": blosc2.CParams(codec=blosc2.Codec.LZ4, clevel=1)}),
    ((100, 100), np.float32, None, {"patch_size": None, "chunk_size": 30, "block_size": 10}),
]


@pytest.mark.parametrize(("shape", "dtype", "mask", "kwargs"), BLOSC2_SAMPLES)
def test_blosc2_accepts_the_layout(shape, dtype, mask, kwargs):
    opts = resolve_storage(shape, dtype, mask, **kwargs)
    arr = blosc2.empty(
        shape,
        dtype=dtype,
        chunks=opts.chunk_size,
        blocks=opts.block_size,
        cparams=opts.blosc2_cparams(dtype),
        dparams=opts.blosc2_dparams(),
    )
    assert arr.chunks == opts.chunk_size
    assert arr.blocks == opts.block_size
    assert arr.cparams.codec == blosc2.Codec(opts.cparams["codec"])
    assert arr.cparams.clevel == opts.cparams["clevel"]


def test_blosc2_round_trip_with_resolved_options():
    data = np.random.default_rng(0).integers(-1000, 1000, (30, 41, 52)).astype(np.int16)
    opts = resolve_storage(data.shape, data.dtype)
    arr = blosc2.asarray(
        data,
        chunks=opts.chunk_size,
        blocks=opts.block_size,
        cparams=opts.blosc2_cparams(data.dtype),
        dparams=opts.blosc2_dparams(),
    )
    np.testing.assert_array_equal(arr[...], data)


@pytest.mark.parametrize("codec", [3, 6, 99, 200])
def test_unknown_codec_ids_are_refused_up_front(tmp_path, codec):
    """Reference 0.0.54 (recorded): ``ValueError: 3 is not a valid Codec``. Here the file
    was created and the first write failed with Blosc2's bare RuntimeError."""
    with pytest.raises(MetaValidationError, match=f"codec: {codec} is not a Blosc2 codec"):
        MLArray.create(tmp_path / "c.mla", (32, 32, 32), np.float32, cparams={"codec": codec})
    assert not (tmp_path / "c.mla").exists()
    with pytest.raises(ValueError, match=f"codec: {codec} "):
        MLArray(np.ones((8, 8, 8), np.float32), cparams={"codec": codec})
    with pytest.raises(ValueError, match=f"codec: {codec} "):
        MLArray.zeros((8, 8, 8), np.float32, cparams={"codec": codec})


def test_codecs_registered_in_this_process_are_accepted():
    out = run_python(
        """
import blosc2, numpy as np
from mlarray import MLArray
blosc2.register_codec("stored", 200, lambda *a: 0, lambda *a: 0)  # 0: kept uncompressed
data = np.arange(512, dtype=np.float32).reshape(8, 8, 8)
m = MLArray(data, cparams={"codec": 200, "nthreads": 1})
print(m.meta.blosc2.cparams["codec"], np.array_equal(m[...], data))
"""
    )
    assert out.split() == ["200", "True"]
