"""Compression presets of the napari plugin's "Recompress .mla" on real volumes.

For each volume and each candidate storage setting (the plugin's presets and
alternatives), write the volume with ``mlarray.io.save_mla`` and measure the file
size, the write time, a full read and random patch reads. Sizes are exact; times
are medians of a few repetitions on a shared machine.

Volumes:

* MNI152 T1 and grey-matter templates (uint8, 197x233x189, RAS), read with nibabel
  from the ``nilearn`` wheel (``pip download nilearn --no-deps``; the wheel is a
  zip, the volumes are read from it without installing nilearn);
* pydicom's ``CT_small.dcm`` (a real 128x128 int16 CT slice), when pydicom is installed;
* nibabel's test volumes ``anatomical.nii`` (a small T1) and ``example4d.nii.gz``
  (an MR series, two volumes);
* the benchmarks' CT-like int16 volume and its uint8 label map (``_common.make_volumes``).

Usage::

    python benchmarks/bench_presets.py                        # downloads the nilearn wheel
    python benchmarks/bench_presets.py --wheel nilearn-*.whl  # or uses one you have
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    make_volumes,
    median,
    random_starts,
    table,
)

MNI = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def _cp(codec: str, clevel: int, *filters: str) -> dict:
    return {"codec": codec, "clevel": clevel, "filters": list(filters)}


# alternatives to the plugin's presets -> save_mla storage keywords;
# "large" = the old archive layout: chunks <= 16 MiB, blocks <= 1 MiB
CANDIDATES: dict[str, dict] = {
    "old 'archive': ZSTD 9 + bitshuffle, large": {
        "cparams": _cp("ZSTD", 9, "BITSHUFFLE"),
        "large": True,
    },
    "ZSTD 9 + shuffle, large": {"cparams": _cp("ZSTD", 9, "SHUFFLE"), "large": True},
    "ZSTD 9 + shuffle, patch 192": {"cparams": _cp("ZSTD", 9, "SHUFFLE")},
    "ZSTD 9 + bitshuffle, chunks 256, blocks 64": {
        "patch_size": None,
        "chunk_size": 256,
        "block_size": 64,
        "cparams": _cp("ZSTD", 9, "BITSHUFFLE"),
    },
    "ZSTD 5 + shuffle, chunks 256, blocks 64": {
        "patch_size": None,
        "chunk_size": 256,
        "block_size": 64,
        "cparams": _cp("ZSTD", 5, "SHUFFLE"),
    },
    "ZSTD 5 + shuffle, patch 192": {"cparams": _cp("ZSTD", 5, "SHUFFLE")},
}


def _plugin_presets() -> dict[str, dict]:
    """The plugin's presets, named as in its menu (empty if the plugin is not importable)."""
    try:
        from napari_mlarray._recompress import PRESETS
    except ImportError:
        return {}
    return {f"preset '{name}'": dict(storage) for name, storage in PRESETS.items()}


def _large(shape, itemsize, chunk_bytes=16 * 2**20, block_bytes=2**20):
    def fit(s, limit):
        out = list(s)
        while np.prod(out) * itemsize > limit and max(out) > 1:
            k = out.index(max(out))
            out[k] = (out[k] + 1) // 2
        return out

    chunks = fit(shape, chunk_bytes)
    return chunks, fit(chunks, block_bytes)


def storage_kwargs(spec: dict, data: np.ndarray) -> dict:
    spec = dict(spec)
    if spec.pop("large", False):
        chunks, blocks = _large(data.shape, data.itemsize)
        spec.update(patch_size=None, chunk_size=chunks, block_size=blocks)
    return spec


def nilearn_volumes(wheel: Path | None, workdir: Path) -> dict[str, np.ndarray]:
    import nibabel as nib

    if wheel is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "nilearn", "--no-deps", "-q", "-d", workdir],
            check=True,
        )
        wheel = next(workdir.glob("nilearn-*.whl"))
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        for kind, label in (("t1", "MNI152 T1"), ("gm", "MNI152 grey matter")):
            img = nib.Nifti1Image.from_bytes(gzip.decompress(zf.read(MNI.format(kind))))
            out[f"{label} {img.get_data_dtype()} {img.shape}"] = np.asarray(img.dataobj)
    return out


def nibabel_volumes() -> dict[str, np.ndarray]:
    import nibabel as nib

    folder = Path(nib.__file__).parent / "tests" / "data"
    out = {}
    for name in ("anatomical.nii", "example4d.nii.gz"):
        arr = np.asarray(nib.load(folder / name).dataobj)
        arr = arr.astype(arr.dtype.newbyteorder("="))
        out[f"nibabel {name} {arr.dtype} {arr.shape}"] = arr
    return out


def pydicom_ct() -> dict[str, np.ndarray]:
    try:
        import pydicom
        from pydicom.data import get_testdata_file
    except ImportError:
        return {}
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = ds.pixel_array
    return {f"pydicom CT_small {arr.dtype} {arr.shape}": arr}


def measure(data: np.ndarray, storage: dict, path: Path, reps: int, n_patches: int) -> dict:
    from mlarray import MLArray
    from mlarray.io import save_mla

    writes, reads, patches = [], [], []
    for _ in range(reps):
        t = time.perf_counter()
        save_mla(path, data, **storage)
        writes.append(time.perf_counter() - t)
        t = time.perf_counter()
        back = MLArray.open(path)[...]
        reads.append(time.perf_counter() - t)
    assert np.array_equal(back, data)
    patch = [min(64, s) for s in data.shape]
    arr = MLArray.open(path)
    for start in random_starts(data.shape, patch, n_patches, seed=1):
        key = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
        t = time.perf_counter()
        arr[key]
        patches.append(time.perf_counter() - t)
    return {
        "size": path.stat().st_size,
        "write": median(writes),
        "read": median(reads),
        "patch": median(patches),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, help="a nilearn wheel (default: pip download it)")
    p.add_argument("--reps", type=int, default=3, help="writes/reads per candidate (median)")
    p.add_argument("--patches", type=int, default=50, help="random 64^3 patch reads")
    p.add_argument("--ct-shape", type=int, nargs=3, default=(128, 192, 192))
    args = p.parse_args()

    import blosc2

    print(f"date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, blosc2 {blosc2.__version__}")
    with tempfile.TemporaryDirectory(prefix="mla-presets-") as tmp:
        work = Path(tmp)
        volumes = nilearn_volumes(args.wheel, work)
        volumes.update(nibabel_volumes())
        volumes.update(pydicom_ct())
        ct, seg = make_volumes(args.ct_shape)
        volumes[f"CT-like int16 {ct.shape} (_common)"] = ct
        volumes[f"label map uint8 {seg.shape} (_common)"] = seg
        candidates = {**_plugin_presets(), **CANDIDATES}
        for name, data in volumes.items():
            rows, base = [], None
            for cand, spec in candidates.items():
                m = measure(
                    data, storage_kwargs(spec, data), work / "x.mla", args.reps, args.patches
                )
                base = base or m["size"]
                rows.append(
                    [
                        cand,
                        f"{m['size'] / 1e6:.3f}",
                        f"{data.nbytes / m['size']:.2f}x",
                        f"{100 * (m['size'] / base - 1):+.1f} %",
                        f"{1e3 * m['write']:.0f}",
                        f"{1e3 * m['read']:.0f}",
                        f"{1e3 * m['patch']:.2f}",
                    ]
                )
            print(f"\n### {name}, {data.nbytes / 1e6:.1f} MB uncompressed\n")
            headers = ["candidate", "MB", "ratio", "size vs default", "write ms", "read ms"]
            print(table([*headers, "64^3 patch ms"], rows))


if __name__ == "__main__":
    main()
