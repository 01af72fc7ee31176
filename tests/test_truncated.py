"""A file changed on disk under an open handle: an error naming the file, never a SIGBUS.

mlarray decodes straight from memory mappings of its files. When another program cuts
a mapped file short in place (``truncate``, ``open(path, "wb")``, ``cp``/
``shutil.copyfile`` over it), touching a page past the new end kills the whole process
with SIGBUS: a napari session with unsaved annotations, a training run. Every scenario
runs in a forked child, and the parent asserts the child ended normally (not killed by
a signal) with :class:`~mlarray.errors.FileChangedError`, or read the data it had
opened. A file replaced by a rename (how mlarray and Blosc2 save) keeps its old
version readable.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import blosc2
import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import FileChangedError, MLArrayError, MLArrayFormatError
from tests._children import reference_env, wait_status

SHAPE = (48, 64, 80)


def _volume(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 3000, shape).astype(np.int16)


def _file(tmp_path: Path, name: str = "case.mla", seed: int = 0) -> tuple[Path, np.ndarray]:
    p = tmp_path / name
    x = _volume(seed)
    MLArray(x).save(p)
    return p, x


def _smaller(tmp_path: Path) -> Path:
    """Another, much smaller ``.mla`` file (what a script saved meanwhile)."""
    q = tmp_path / "other_small.mla"
    MLArray(_volume(7, (8, 8, 8))).save(q)
    return q


def _shrink(p: Path, how: str, smaller: Path) -> None:
    """Cut ``p`` short in place, as another program would."""
    if how == "zero":
        os.truncate(p, 0)
    elif how == "half":
        os.truncate(p, os.path.getsize(p) // 2)
    else:  # "rewrite": copied over in place (O_TRUNC, then the smaller file's bytes)
        shutil.copyfile(smaller, p)


def _in_child(fn: Callable[[], object]) -> str:
    """Run ``fn`` in a forked child; what it returned or raised, as text.

    Fails if the child was killed by a signal (SIGBUS) or hung.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        code = 0
        try:
            os.close(r)
            try:
                out = fn()
            except MLArrayError as exc:
                text = f"{type(exc).__name__}: {exc}"
            except BaseException as exc:  # not ours: reported, and a failing exit code
                text, code = f"OTHER {type(exc).__name__}: {exc}", 3
            else:
                text = f"returned: {out}"
            os.write(w, text.encode()[:8192])
        finally:
            os._exit(code)
    os.close(w)
    status = wait_status(pid)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    assert status is not None, "the child hung"
    assert not os.WIFSIGNALED(status), (
        f"the child was killed by {signal.Signals(os.WTERMSIG(status)).name}: {text}"
    )
    assert os.WEXITSTATUS(status) == 0, text
    return text


def _changes(*calls: Callable[[], object]) -> list[str]:
    """The messages of the FileChangedErrors ``calls`` raise, one by one."""
    out = []
    for call in calls:
        try:
            call()
        except FileChangedError as exc:
            out.append(str(exc))
    return out


def _changed(text: str, p: Path) -> None:
    """``text`` reports our error naming the file and its sizes."""
    assert text.startswith("FileChangedError: "), text
    assert str(p) in text, text
    assert "changed on disk while open" in text and " bytes, was " in text, text


@pytest.mark.parametrize("how", ["zero", "half", "rewrite"])
@pytest.mark.parametrize("mmap_mode", ["r", "c", "r+", None])
def test_patch_read_after_the_file_was_cut_short(tmp_path, mmap_mode, how):
    p, x = _file(tmp_path)
    smaller = _smaller(tmp_path)
    size = os.path.getsize(p)

    def child() -> object:
        a = MLArray.open(p, mmap_mode=mmap_mode)
        assert np.array_equal(a[0:8, 0:8, 0:8], x[0:8, 0:8, 0:8])
        _shrink(p, how, smaller)
        return a[30:48, 30:64, 40:80].shape

    text = _in_child(child)
    _changed(text, p)
    assert f"was {size} (" in text, text
    assert f"now {os.path.getsize(p)} bytes" in text, text


def test_the_error_is_a_format_error_with_the_sizes(tmp_path):
    p, _ = _file(tmp_path)
    size = os.path.getsize(p)

    def child() -> object:
        a = MLArray.open(p)
        os.truncate(p, 1000)
        try:
            a[5]
        except FileChangedError as exc:
            return (isinstance(exc, MLArrayFormatError), exc.path, exc.size, exc.was)
        return "no error"

    assert _in_child(child) == f"returned: {(True, str(p), 1000, size)}"


@pytest.mark.parametrize("how", ["zero", "half", "rewrite"])
def test_cached_plane_and_patch_reads_after_the_file_was_cut_short(tmp_path, how):
    p, x = _file(tmp_path)
    smaller = _smaller(tmp_path)

    def child() -> object:
        a = MLArray.open(p)
        a.set_chunk_cache()
        assert np.array_equal(a[5], x[5])  # the block layer under plane 5 is kept
        _shrink(p, how, smaller)
        # planes the cache holds were decoded from the file as opened: still that data
        assert np.array_equal(a[6], x[6])
        out = []
        for key in (np.s_[:, 7], np.s_[..., 9], np.s_[20:30, 10:20, 10:20]):
            try:
                a[key]
            except FileChangedError as exc:
                out.append(str(exc))
        return out

    text = _in_child(child)
    assert text.startswith("returned: ["), text
    assert text.count("changed on disk while open") == 3, text


@pytest.mark.parametrize(
    "operation", ["to_numpy", "compute_stats", "save_elsewhere", "to_dask_compute"]
)
def test_whole_volume_reads_after_the_file_was_cut_short(tmp_path, operation):
    p, _ = _file(tmp_path)
    dst = tmp_path / "copy.mla"

    def child() -> object:
        a = MLArray.open(p)
        a[0]
        os.truncate(p, os.path.getsize(p) // 3)
        if operation == "to_numpy":
            return a.to_numpy().shape
        if operation == "compute_stats":
            return a.compute_stats()
        if operation == "save_elsewhere":
            a.save(dst)
            return "saved"
        # in one thread: a forked child has none of the parent's pool threads
        return a.to_dask().compute(scheduler="synchronous").shape

    text = _in_child(child)
    if operation == "to_dask_compute":
        # each dask task reopens the file by its path: the file as it is now is refused
        assert text.startswith("MLArrayFormatError: "), text
        assert str(p) in text, text
    else:
        _changed(text, p)
    assert not dst.exists()


@pytest.mark.parametrize("how", ["zero", "half", "rewrite"])
def test_napari_reader_source_after_the_file_was_cut_short(tmp_path, how):
    """The viewer's C path (no napari, no Qt: the reader's data source read directly)."""
    from napari_mlarray._source import open_source

    p, x = _file(tmp_path)
    smaller = _smaller(tmp_path)

    def child() -> object:
        opened = open_source(os.fspath(p), 1)
        assert opened is not None and opened[0] is not None
        src = opened[0]
        assert np.array_equal(src[3:4], x[3:4])  # a plane, as napari asks for it
        _shrink(p, how, smaller)
        keys = (np.s_[:, :, 5:6], np.s_[10:20, 5:30, 5:30], np.s_[...])
        reads = [lambda key=key: src[key] for key in keys]
        return _changes(*reads, src.full)  # full(): what saving the layer opens

    text = _in_child(child)
    assert text.startswith("returned: ["), text
    assert text.count(str(p)) == 4, text
    assert text.count("changed on disk while open") == 4, text  # full() checks alike


@pytest.mark.parametrize("mmap_mode", ["r+", "c", None])
def test_writes_after_the_file_was_cut_short_leave_it_as_it_is(tmp_path, mmap_mode):
    p, _ = _file(tmp_path)
    half = os.path.getsize(p) // 2

    def child() -> object:
        a = MLArray.open(p, mode="a" if mmap_mode is None else "r", mmap_mode=mmap_mode)
        a[0, 0, 0]
        os.truncate(p, half)

        def write() -> None:
            a[10:20, 10:20, 10:20] = 7

        return _changes(write, a.close)  # close(): writable handles store their metadata

    text = _in_child(child)
    assert "changed on disk while open" in text, text
    assert os.path.getsize(p) == half  # nothing written into what the other program left


@pytest.mark.parametrize("mmap_mode", ["w+", None])
def test_a_created_file_cut_short_while_it_is_written(tmp_path, mmap_mode):
    p = tmp_path / "created.mla"

    def child() -> object:
        a = MLArray.create(p, SHAPE, np.int16, mmap_mode=mmap_mode)
        a[0:8] = 3
        os.truncate(p, 100)
        out = []
        try:
            a[10:20] = 4
        except FileChangedError as exc:
            out.append(str(exc))
        try:
            a[0:8]
        except FileChangedError as exc:
            out.append(str(exc))
        return out

    text = _in_child(child)
    assert text.count("changed on disk while open") == 2, text
    assert os.path.getsize(p) == 100


def test_a_copy_on_write_handle_pickled_after_the_file_was_cut_short(tmp_path):
    p, _ = _file(tmp_path)

    def child() -> object:
        a = MLArray.open(p, mmap_mode="c")  # pickles as its frame's bytes
        a[0]
        os.truncate(p, 4096)
        return len(pickle.dumps(a))

    _changed(_in_child(child), p)


@pytest.mark.parametrize("compressed", [True, False])
def test_load_reads_the_file_as_it_is_now(tmp_path, compressed):
    """``MLArray.load`` maps the file version it finds (the shared mapping of the cut
    file is not reused): a file cut short is refused as what it is now."""
    p, _ = _file(tmp_path)

    def child() -> object:
        a = MLArray.open(p)
        a[0]
        os.truncate(p, os.path.getsize(p) // 2)
        return MLArray.load(p, compressed=compressed).shape

    text = _in_child(child)
    assert text.startswith("MLArrayFormatError: "), text
    assert str(p) in text, text


@pytest.mark.parametrize("mmap_mode", ["r", "c", None])
@pytest.mark.parametrize("how", ["append", "rewrite_larger"])
def test_a_grown_file_never_reads_as_other_data(tmp_path, mmap_mode, how):
    """Appended to, or rewritten in place with a larger file: the handle reports it.

    The bytes under the old length may not be the frame the handle opened any more (a
    larger file copied over it: plain file I/O would decode bytes of neither file, the
    copy-on-write mapping would still die of SIGBUS); an append cannot be told apart
    from such a rewrite by the file's size and time, so it is reported too."""
    p, x = _file(tmp_path)
    larger = tmp_path / "other_large.mla"
    y = _volume(3, SHAPE)
    MLArray(y, patch_size=None, chunk_size=(16, 64, 80), block_size=(4, 32, 32)).save(larger)
    assert os.path.getsize(larger) > os.path.getsize(p)

    def child() -> object:
        a = MLArray.open(p, mmap_mode=mmap_mode)
        assert np.array_equal(a[...], x)
        if how == "append":
            with open(p, "ab") as f:
                f.write(b"\0" * 100_000)
        else:
            shutil.copyfile(larger, p)
        return np.array_equal(a[...], x)

    text = _in_child(child)
    _changed(text, p)


REFERENCE_PYTHON = os.environ.get("MLARRAY_REFERENCE_PYTHON")
_SAVERS = ["mlarray_save", "blosc2_mode_w", "delete", "reference_save"]


@pytest.mark.parametrize("how", _SAVERS)
def test_a_file_replaced_or_deleted_keeps_its_old_version_readable(tmp_path, how):
    """Saving over the path through a new file (mlarray's rename, Blosc2's mode "w"
    and the reference package's save, which remove the file first) or deleting it
    leaves the mapped file alone: open handles (and the viewer's source) keep reading
    it, and saving such a handle elsewhere writes its data, not the new file's. So does
    a handle reading through plain file I/O (``mmap_mode=None``), whose reads once went
    to whatever file the path named then (the new file's voxels, silently)."""
    from napari_mlarray._source import open_source

    if how == "reference_save" and not REFERENCE_PYTHON:
        pytest.skip("set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)")
    p, x = _file(tmp_path)
    y = _volume(5)
    dst = tmp_path / "handle_copy.mla"
    script = (
        "import sys, numpy as np; from mlarray import MLArray; "
        "MLArray(np.load(sys.argv[1])).save(sys.argv[2])"
    )
    np.save(tmp_path / "y.npy", y)

    def child() -> object:
        a = MLArray.open(p)
        plain = MLArray.open(p, mmap_mode=None)
        src = open_source(os.fspath(p), 1)[0]
        assert np.array_equal(a[1], x[1]) and np.array_equal(src[1:2], x[1:2])
        assert np.array_equal(plain[1], x[1])
        if how == "mlarray_save":
            MLArray(y).save(p)
        elif how == "blosc2_mode_w":
            blosc2.asarray(y, urlpath=os.fspath(p), mode="w")
        elif how == "reference_save":  # another program: the reference package
            subprocess.run(
                [REFERENCE_PYTHON, "-c", script, os.fspath(tmp_path / "y.npy"), os.fspath(p)],
                env=reference_env(),
                check=True,
                capture_output=True,
                timeout=120,
            )
        else:
            os.remove(p)
        same = np.array_equal(a[...], x) and np.array_equal(src[...], x)
        plain_same = np.array_equal(plain[2:40], x[2:40]) and np.array_equal(plain[...], x)
        a.save(dst)
        saved = np.array_equal(MLArray.open(dst)[...], x)
        plain.save(dst)
        return (same, plain_same, saved, np.array_equal(MLArray.open(dst)[...], x))

    assert _in_child(child) == "returned: (True, True, True, True)"


def test_own_writes_keep_the_handle_readable_other_handles_report_them(tmp_path):
    p, x = _file(tmp_path)

    def child() -> object:
        reader = MLArray.open(p)
        writer = MLArray.open(p, mmap_mode="r+")
        assert np.array_equal(reader[2], x[2])
        for v in (1, 2, 3):  # each write may move chunks and grow the file
            writer[v * 5 : v * 5 + 10, :, :] = v
        expected = x.copy()
        for v in (1, 2, 3):
            expected[v * 5 : v * 5 + 10] = v
        ok = np.array_equal(writer[...], expected)
        try:
            reader[2]
        except FileChangedError as exc:
            return ok, str(exc)
        return ok, "no error"

    text = _in_child(child)
    assert text.startswith("returned: (True, "), text
    assert "changed on disk while open" in text and "another program or handle" in text, text


def test_reads_on_other_threads_during_the_handles_own_writes_report_nothing(tmp_path):
    """napari's async slicing reads planes while labels are painted through the same
    handle: the handle's own in-place writes are not a change of its file."""
    import threading

    p, _ = _file(tmp_path)
    a = MLArray.open(p, mode="a", mmap_mode="r+")
    a.set_chunk_cache(SHAPE[0] * SHAPE[1] * 16 * 2)
    errors: list[BaseException] = []

    def scroll(done: threading.Event) -> None:
        while not done.is_set():
            try:
                a[:, :, 60]
                a[:, :, 20]
            except BaseException as exc:  # collected: the assert below shows it
                errors.append(exc)
                return

    for it in range(1, 16):
        done = threading.Event()
        reader = threading.Thread(target=scroll, args=(done,))
        reader.start()
        try:
            a[:, :, 20] = it
        finally:
            done.set()
            reader.join()
        assert (a[:, :, 20] == it).all()
    assert not errors, errors
    a.close()
    assert MLArray.open(p).verify().ok


def test_two_writable_handles_of_one_process_close_in_turn(tmp_path):
    """Another handle of this process wrote the file in place: a writable handle's view
    of the frame is stale (it used to read through pages past the new end: SIGBUS); its
    reads and writes go through a fresh view of the file (they see the other handle's
    write), its ``close()`` stores its metadata; another program's change is still
    refused."""
    p, x = _file(tmp_path)
    expected = x.copy()
    expected[0:4] = 5

    def child() -> object:
        out = []
        first = MLArray.open(p, mode="a", mmap_mode="r+")
        second = MLArray.open(p, mode="a", mmap_mode=None)
        first[0:4] = 5
        first.meta.extra = {"by": "first"}
        first.close()
        out.append(np.array_equal(second[0:12], expected[0:12]))
        second.meta.extra = {"by": "second"}
        second.close()
        final = MLArray.open(p)
        out.append(final.meta.extra == {"by": "second"})
        out.append(np.array_equal(final[...], expected) and final.verify().ok)
        third = MLArray.open(p, mode="a", mmap_mode="r+")
        third.meta.extra = {"by": "third"}  # (a close with nothing to write writes nothing)
        with open(p, "ab") as f:  # another program
            f.write(b"\0" * 4096)
        try:
            third.close()
        except FileChangedError:
            out.append(True)
        return out

    assert _in_child(child) == "returned: [True, True, True, True]"


def test_a_touched_file_reads_on_and_keeps_metadata_edits(tmp_path):
    """``touch`` (or a backup tool setting the time) changes no byte: handles read on,
    a metadata edit of a writable handle is stored on close, the viewer's source too."""
    from napari_mlarray._source import open_source

    p, x = _file(tmp_path)

    def child() -> object:
        r = MLArray.open(p)
        w = MLArray.open(p, mmap_mode="r+")
        src = open_source(os.fspath(p), 1)[0]
        assert np.array_equal(r[2:9], x[2:9]) and np.array_equal(src[3:4], x[3:4])
        w.spacing = [2.0, 2.0, 2.0]
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        ok = np.array_equal(r[...], x) and np.array_equal(src[:, 5:6], x[:, 5:6])
        ok = ok and np.array_equal(src.full()[[1, 3]], x[[1, 3]])
        w.close()
        return ok and MLArray.open(p).spacing == [2.0, 2.0, 2.0]

    assert _in_child(child) == "returned: True"


def test_a_chunk_changed_in_place_under_a_touch_is_still_caught(tmp_path):
    """Bytes of a chunk rewritten in place at the same size leave the frame's header and
    trailer as they were, like a touch: the chunks are checked against their checksums
    again, so a handle that had verified them reports the damage, not the bytes."""
    from mlarray.frame import inspect_frame

    p, x = _file(tmp_path)

    def child() -> object:
        a = MLArray.open(p)
        assert np.array_equal(a[...], x)  # every chunk verified
        info = inspect_frame(p.read_bytes(), p)
        with open(p, "r+b") as f:  # same size, same trailer
            f.seek(int(info.chunk_pos[0]) + int(info.chunk_cbytes[0]) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        return a[0:4, 0:4, 0:4]

    text = _in_child(child)
    assert text.startswith("CorruptChunkError: ") and str(p) in text, text


_RESAVER = """
import sys, numpy as np
from mlarray import MLArray
x = np.load(sys.argv[1])
for k in range(1, int(sys.argv[3]) + 1):  # new versions saved over the path, one by one
    MLArray(x + 3000 * (k % 3)).save(sys.argv[2])
"""


def test_plain_io_reads_while_another_process_saves_over_the_file_are_one_version(tmp_path):
    """A data loader reading with ``mmap_mode=None`` while another process re-saves the
    case: a handle opened before reads its own version to the end, and a handle opened
    per patch reads one whole version per patch, never chunks of two files (a patch
    mixed two versions silently when reads went to whatever the path named)."""
    p = tmp_path / "case.mla"
    x = np.random.default_rng(0).integers(0, 1000, (96, 128, 128)).astype(np.int16)
    versions = [x + 3000 * k for k in range(3)]
    MLArray(x, chunk_size=(16, 16, 16), block_size=(8, 8, 8)).save(p)
    np.save(tmp_path / "x.npy", x)
    held = MLArray.open(p, mmap_mode=None)
    first = os.stat(p).st_ino
    writer = subprocess.Popen(
        [sys.executable, "-c", _RESAVER, os.fspath(tmp_path / "x.npy"), os.fspath(p), "25"]
    )
    rng = np.random.default_rng(1)
    held_reads = fresh_reads = 0
    try:
        while writer.poll() is None:
            lo = [int(rng.integers(0, n - 48)) for n in x.shape]
            sl = tuple(slice(a, a + 48) for a in lo)
            assert np.array_equal(held[sl], x[sl]), "the held handle read another version"
            held_reads += os.stat(p).st_ino != first  # a read after a replacement
            patch = MLArray.open(p, mmap_mode=None)[sl]
            assert any(np.array_equal(patch, v[sl]) for v in versions), "a mixed patch"
            fresh_reads += 1
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert held_reads > 5 and fresh_reads > 5  # the reads overlapped the saves
    assert np.array_equal(held[...], x)


def test_plain_io_handles_of_one_file_share_the_descriptor_that_keeps_its_version(tmp_path):
    """The descriptor that keeps a plain-I/O handle's file version is one per file
    version, not one more per handle (a loader holding many handles stays far from the
    open-files limit)."""
    p, x = _file(tmp_path)

    def descriptors() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}") == os.fspath(p)
            except OSError:  # the listing's own descriptor, closed meanwhile
                continue
        return n

    before = descriptors()
    handles = [MLArray.open(p, mmap_mode=None) for _ in range(20)]
    assert all(np.array_equal(h[3], x[3]) for h in handles)
    assert descriptors() - before <= len(handles) + 1  # Blosc2's own, and one shared


@pytest.mark.parametrize("how", ["replace", "delete"])
def test_without_a_descriptor_name_a_plain_io_handle_refuses_a_replaced_file(
    tmp_path, monkeypatch, how
):
    """Where c-blosc2 cannot be given a name of the opened file's descriptor (no
    /proc/self/fd: not Linux), a read-only plain-I/O handle reads the file by its path:
    once the path names another file or none, its reads raise FileChangedError naming
    the file instead of reading whatever the path names."""
    from mlarray import io

    monkeypatch.setattr(io, "_FD_DIR", os.fspath(tmp_path / "no_fd_dir"))
    p, x = _file(tmp_path)
    plain = MLArray.open(p, mmap_mode=None)
    assert np.array_equal(plain[1:3], x[1:3])
    if how == "replace":
        MLArray(_volume(5)).save(p)
    else:
        os.remove(p)
    with pytest.raises(FileChangedError, match="replaced or deleted since it was opened") as err:
        plain[...]
    assert str(p) in str(err.value)


def test_dask_blocks_of_a_file_replaced_since_to_dask_are_refused(tmp_path):
    """Each dask task opens the file by its path: a file replaced since ``to_dask()``
    (a save over it) is refused, never mixed into the result, while the handle keeps
    reading the version it opened."""
    pytest.importorskip("dask")
    p, x = _file(tmp_path)
    a = MLArray.open(p)
    d = a.to_dask()
    MLArray(_volume(5)).save(p)  # a new file under the same name
    with pytest.raises(FileChangedError, match="since to_dask"):
        d.compute(scheduler="synchronous")
    np.testing.assert_array_equal(a[...], x)
    np.testing.assert_array_equal(MLArray.open(p).to_dask().compute(), _volume(5))


@pytest.mark.parametrize("mmap_mode", ["r", "c", "r+", None])
def test_dask_blocks_of_an_unchanged_file_read_in_every_mode(tmp_path, mmap_mode):
    """The version check of dask tasks refuses nothing while the file is as it was (a
    copy-on-write handle's edits travel with it); a touch is no change."""
    pytest.importorskip("dask")
    p, x = _file(tmp_path)
    a = MLArray.open(p, mmap_mode=mmap_mode)
    want = x.copy()
    if mmap_mode == "c":
        a[0:2] = 7
        want[0:2] = 7
    d = a.to_dask()
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))
    np.testing.assert_array_equal(d.compute(scheduler="synchronous"), want)


def test_a_read_during_another_programs_in_place_write_is_a_change_not_damage(tmp_path):
    """An mlarray writer in another process keeps an undo journal while it writes; bytes
    it rewrote show through the reader's mapping before the file's timestamp moves (one
    tick). The read that trips over them says the file changed, not that it is damaged;
    the same bytes with no write under way are damage."""
    from mlarray._sidefiles import journal_path
    from mlarray.errors import CorruptChunkError
    from mlarray.frame import inspect_frame
    from mlarray.integrity import forget_verified

    p, x = tmp_path / "w.mla", _volume()
    MLArray(x, patch_size=None, chunk_size=(16, 64, 80)).save(p)
    forget_verified()  # as in a data loader's process: no chunk verified yet
    a = MLArray.open(p)
    assert np.array_equal(a[:4], x[:4])
    st = os.stat(p)
    info = inspect_frame(p.read_bytes(), p)
    i = int(np.flatnonzero(info.chunk_pos >= 0)[-1])
    journal_path(p).write_bytes(b"")  # a write under way (its journal)
    with open(p, "r+b") as f:
        f.seek(int(info.chunk_pos[i]) + int(info.chunk_cbytes[i]) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # within the same timestamp tick
    with pytest.raises(FileChangedError, match="changed on disk while it was being read"):
        a[...]
    with pytest.raises(FileChangedError):
        a.verify()
    journal_path(p).unlink()  # no write under way: the same bytes are damage
    with pytest.raises(CorruptChunkError, match=rf"chunk {i} "):
        a[...]


def test_readers_opening_a_file_another_process_writes_see_changes_not_damage(tmp_path):
    """A data loader opening and reading a file while another process writes it in place:
    each read gives consistent data or FileChangedError, never a 'corrupt' error."""
    p = tmp_path / "cc.mla"
    MLArray(
        np.zeros((16, 64, 64), np.float32),
        patch_size=None,
        chunk_size=(2, 64, 64),
        block_size=(1, 32, 32),
    ).save(p)
    code = f"""
import numpy as np, time
from mlarray import MLArray
h = MLArray.open({os.fspath(p)!r}, mmap_mode="r+")
print("ready", flush=True)
rng = np.random.default_rng(0)
for i in range(16):
    h[i] = (i + 1) + rng.random((64, 64), dtype=np.float32) * 1e-3
    time.sleep(0.02)
h.close()
"""
    writer = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        seen, other = 0, []
        while writer.poll() is None:
            try:
                y = MLArray.open(p)[...]
            except FileChangedError:
                continue
            except MLArrayError as exc:
                other.append(f"{type(exc).__name__}: {exc}")
                continue
            seen += 1
            for i in range(16):  # each plane: not written yet, or all written
                assert (y[i] == 0).all() or ((y[i] >= i + 1) & (y[i] < i + 1.01)).all()
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0, writer.stderr.read()
    assert not other, other
    assert seen and MLArray.open(p).verify().ok


@pytest.mark.parametrize("mmap_mode", ["r+", None])
def test_two_writable_handles_of_one_process_both_write(tmp_path, mmap_mode):
    """Two writable handles of one file in one process (two tools, two widgets): after
    one wrote in place, the other's writes and metadata edits land too (it writes through
    a fresh view of the file); another program's change is still refused."""
    p, x = _file(tmp_path)
    mode = "a" if mmap_mode is None else "r"
    expected = x.copy()
    expected[0:10] = 1
    expected[10:20] = 2
    expected[20:24] = 3

    def child() -> object:
        img = MLArray.open(p, mode=mode, mmap_mode=mmap_mode)
        lab = MLArray.open(p, mode=mode, mmap_mode=mmap_mode)
        img[0:10] = 1
        lab[10:20] = 2
        lab.meta.extra = {"fixed": True}
        img[20:24] = 3  # and back
        img.close()
        lab.close()
        final = MLArray.open(p)
        out = [np.array_equal(final[...], expected), final.verify().ok]
        out.append(final.meta.extra == {"fixed": True})
        third = MLArray.open(p, mode=mode, mmap_mode=mmap_mode)
        with open(p, "ab") as f:  # another program
            f.write(b"\0" * 4096)
        try:
            third[0] = 4
        except FileChangedError:
            out.append(True)
        return out

    assert _in_child(child) == "returned: [True, True, True, True]"


@pytest.mark.parametrize("recompress", [False, True])
def test_saving_a_handle_while_its_file_is_replaced_writes_the_handle_s_own_version(
    tmp_path, recompress
):
    # the save streams from a second, plain-I/O store of the file: it read by path, so a
    # save over the path landing during it gave a copy of two versions (checksums passing)
    from mlarray.io import save_mla

    src, copy = tmp_path / "src.mla", tmp_path / "copy.mla"
    a = np.random.default_rng(0).integers(0, 1000, (96, 128, 128)).astype(np.int16)
    b = a + 3000
    MLArray(a).save(src)
    handle = MLArray.open(src)
    replaced = []

    def progress(done, total):  # another process's save lands after the first chunk
        if not replaced:
            replaced.append(True)
            MLArray(b).save(src)

    kw = {"cparams": {"codec": "zstd", "clevel": 1}} if recompress else {}
    save_mla(copy, handle, handle.meta, progress=progress, **kw)
    assert replaced
    np.testing.assert_array_equal(MLArray.open(copy)[...], a)
    np.testing.assert_array_equal(handle[...], a)
    np.testing.assert_array_equal(MLArray.open(src)[...], b)
