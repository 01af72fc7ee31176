"""A real Dask distributed cluster on loopback: ``mlarray convert --scheduler`` and to_dask."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mlarray import MLArray
from tests._worldcheck import assert_same_world, ours, run_cli

distributed = pytest.importorskip("distributed")


@pytest.fixture
def cluster():
    # in-process workers (saves CPU), but a real TCP scheduler the CLI process connects to
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as c:
        yield c


def test_convert_folder_on_a_dask_cluster(tmp_path, cluster):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(5)
    arrays = {}
    for i in range(4):
        a = rng.integers(0, 4, (6 + i, 5, 4)).astype(np.uint8)
        aff = np.array([[0, 0, 1.5, 10], [0, -2, 0, i], [1 + i, 0, 0, -3], [0, 0, 0, 1.0]])
        nib.save(nib.Nifti1Image(a, aff), data / f"case_{i}_seg.nii.gz")
        arrays[f"case_{i}_seg"] = (a, aff)
    (data / "bad.nii").write_bytes(b"\x00" * 40)
    out = tmp_path / "out"
    out.mkdir()

    proc = run_cli("convert", data, out, "--scheduler", cluster.scheduler_address)
    assert proc.returncode == 1, proc.stderr
    assert "5 files: 4 done, 0 skipped, 1 failed" in proc.stdout, proc.stdout
    assert "bad.nii" in proc.stdout
    # the work ran on the cluster's worker, not in the command's process
    prefix = cluster.scheduler.task_prefixes.get("run_task")
    assert prefix is not None and sum(prefix.state_counts.values()) >= 5
    for name, (a, aff) in arrays.items():
        img = MLArray.open(out / f"{name}.mla")
        assert img.meta.is_seg.is_seg is True  # guessed from the name and the data
        data_o, aff_o = ours(img)
        assert_same_world(a, aff, data_o, aff_o, atol=1e-6)

    proc = run_cli("convert", data, out, "--scheduler", cluster.scheduler_address)
    assert "5 files: 0 done, 4 skipped, 1 failed" in proc.stdout, proc.stdout

    # the converted files, read lazily on the cluster through to_dask
    with distributed.Client(cluster) as client:
        img = MLArray.open(out / "case_3_seg.mla")
        d = img.to_dask()
        assert d.chunksize == tuple(img.chunks)
        total = client.compute(d.astype(np.int64).sum()).result()
        assert int(total) == int(arrays["case_3_seg"][0].astype(np.int64).sum())


def test_unreachable_scheduler_is_one_line(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / "a.nii")
    (tmp_path / "out").mkdir()
    proc = run_cli(
        "convert",
        tmp_path / "a.nii",
        tmp_path / "out",
        "--scheduler",
        "tcp://127.0.0.1:9",
        env={"DASK_MLARRAY__SCHEDULER_TIMEOUT": "1s"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "tcp://127.0.0.1:9" in proc.stderr
