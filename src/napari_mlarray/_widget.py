"""The "Recompress .mla" dock widget: magicgui glue over :mod:`napari_mlarray._recompress`.

Pick an image/labels layer or an ``.mla`` file, a preset (a storage keyword
dict) or codec / level / filter and a layout, press *Recompress*. The job runs
in a napari worker thread; its progress shows in napari's activity dock
(:class:`napari.utils.progress`), the sizes, ratios and time in the widget.
The *Custom* values and the preset the widget starts with are napari plugin
settings (the ``configurations`` contribution of ``napari.yaml``).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    PushButton,
    RadioButtons,
    SpinBox,
    TupleEdit,
)
from superqt.utils import ensure_main_thread

from mlarray.errors import MLArrayError
from napari_mlarray._layer_common import KEY
from napari_mlarray._recompress import (
    PRESET_LABELS,
    PRESETS,
    RecompressResult,
    recompress,
    suggest_output,
)
from napari_mlarray._sample_data import in_sample_folder
from napari_mlarray._writer import stored_axes

__all__ = ["Codec", "Filter", "RecompressWidget"]

Codec = enum.Enum("Codec", {n: n for n in ("BLOSCLZ", "LZ4", "LZ4HC", "ZLIB", "ZSTD")})
Filter = enum.Enum("Filter", {n: n for n in ("NOFILTER", "SHUFFLE", "BITSHUFFLE")})


def _sizes(label: str, value: tuple[int, ...], **kwargs: Any) -> TupleEdit:
    """One integer field per array axis (chunk or block size)."""
    return TupleEdit(label=label, value=value, options={"min": 1, "max": 1 << 20}, **kwargs)


def _open_folder() -> Path:
    """The folder files were last opened from in napari (else the home folder), not a
    sample data folder."""
    from napari.utils.history import get_open_history

    folders = [f for f in get_open_history() if not in_sample_folder(f)]
    return Path(folders[0] if folders else Path.home())


class RecompressWidget(Container):
    """Recompress an image/labels layer or an ``.mla`` file with other storage settings.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers can be picked (napari passes it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.worker = None  #: the running (or last) worker
        self.result: RecompressResult | None = None  #: the last successful result
        self.pbar: napari.utils.progress | None = None  #: the last activity-dock progress bar
        self.source = RadioButtons(
            label="Source",
            choices=[("Layer", "layer"), ("File on disk", "file")],
            orientation="horizontal",
            value="layer",
        )
        self.layer = ComboBox(label="Layer", choices=self._layer_choices, nullable=True)
        self.source_file = FileEdit(label="File", mode="r", filter="*.mla")
        presets = [(label, key) for key, label in PRESET_LABELS.items()]
        self.preset = ComboBox(label="Preset", choices=[("Custom", "custom"), *presets])
        self.codec = ComboBox(label="Codec", choices=Codec, value=Codec.LZ4HC)
        self.clevel = SpinBox(label="Level", min=0, max=9, value=8)
        self.filter = ComboBox(label="Filter", choices=Filter, value=Filter.SHUFFLE)
        layouts = [("Patch size (training reads)", "patch"), ("Chunks and blocks", "chunks")]
        self.layout_mode = ComboBox(label="Layout", choices=layouts)
        self.patch_size = SpinBox(label="Patch size", min=1, max=1 << 16, value=192)
        self.chunk_size = _sizes("Chunk size", (256,) * 3)
        self.block_size = _sizes("Block size", (64,) * 3)
        self.output = FileEdit(label="Output", mode="w", filter="*.mla")
        self.in_place = CheckBox(text="Overwrite the source file (atomic)")
        self.run_button = PushButton(text="Recompress")
        self.status = Label(label="Status", value="-")
        self.status.native.setWordWrap(True)
        self._fields = (self.codec, self.clevel, self.filter, self.layout_mode, self.patch_size)
        self.extend([self.source, self.layer, self.source_file, self.preset, *self._fields])
        self.extend([self.chunk_size, self.block_size, self.output, self.in_place])
        self.extend([self.run_button, self.status])
        self._load_settings()
        self.preset.changed.connect(self._on_preset)
        for widget in (*self._fields, self.chunk_size, self.block_size):
            widget.changed.connect(self._on_field)
        for widget in (self.source, self.layer, self.source_file):
            widget.changed.connect(self._on_source)
        self.run_button.changed.connect(self.start)
        for name in ("inserted", "removed", "moved", "reordered"):
            getattr(self._viewer.layers.events, name).connect(self.layer.reset_choices)
        active = self._viewer.layers.selection.active
        if active is not None and active in self.layer.choices:
            self.layer.value = active
        self._on_source()

    # ------------------------------------------------------------ settings
    def _load_settings(self) -> None:
        from napari.settings import get_plugin_settings

        try:
            section = get_plugin_settings("napari-mlarray").compression
        except (KeyError, AttributeError):  # the plugin's settings are not registered
            return
        self._set_fields(
            codec=getattr(Codec, section.codec, Codec.LZ4HC),
            clevel=section.clevel,
            filter=getattr(Filter, section.filter, Filter.SHUFFLE),
            patch_size=section.patch_size,
        )
        if section.preset in PRESETS:
            self.preset.value = section.preset
            self._on_preset(section.preset)

    def _set_fields(self, **values: Any) -> None:
        with self.changed.blocked():
            for name, value in values.items():
                widget = getattr(self, name)
                with widget.changed.blocked():
                    widget.value = value
        self._show_layout()

    def _on_preset(self, key: str) -> None:
        if key not in PRESETS:
            return
        storage = PRESETS[key]
        cp = storage["cparams"]
        n = len(self.chunk_size.value)
        chunked = storage.get("patch_size") is None
        self._set_fields(
            codec=Codec[cp["codec"]],
            clevel=cp["clevel"],
            filter=Filter[cp["filters"][0]],
            layout_mode="chunks" if chunked else "patch",
            patch_size=storage.get("patch_size") or self.patch_size.value,
            chunk_size=(storage.get("chunk_size") or 256,) * n,
            block_size=(storage.get("block_size") or 64,) * n,
        )
        self.status.value = PRESET_LABELS[key]

    def _on_field(self, _value: Any = None) -> None:
        self.preset.value = "custom"
        self._show_layout()

    def _show_layout(self) -> None:
        patch = self.layout_mode.value == "patch"
        self.patch_size.visible = patch
        self.chunk_size.visible = self.block_size.visible = not patch

    def storage(self) -> dict[str, Any]:
        """The storage keywords as chosen: a preset's dict, or the fields (a layer's axis
        order, or a file's stored one).

        Returns
        -------
        dict
        """
        if self.preset.value in PRESETS:
            return dict(PRESETS[self.preset.value])
        cparams = {
            "codec": self.codec.value.name,
            "clevel": self.clevel.value,
            "filters": [self.filter.value.name],
        }
        if self.layout_mode.value == "patch":
            return {"patch_size": self.patch_size.value, "cparams": cparams}
        chunks, blocks = list(self.chunk_size.value), list(self.block_size.value)
        return {"patch_size": None, "chunk_size": chunks, "block_size": blocks, "cparams": cparams}

    # ------------------------------------------------------------- sources
    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        kinds = (napari.layers.Image, napari.layers.Labels)
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, kinds) and not layer.multiscale
        ]

    def _source_mla(self) -> Path | None:
        """The ``.mla`` file the source is (or was read from), if any."""
        if self.source.value == "file":
            path = self.source_file.value
        else:
            path = None if self.layer.value is None else self.layer.value.source.path
        if path and str(path).lower().endswith(".mla") and Path(path).is_file():
            return Path(path)
        return None

    def _suggest_output(self) -> Path | None:
        """Next to the file the source was read from, else next to the file it was made for,
        else in the folder files were last opened from; never in the sample data's
        temporary folder (removed when napari exits): in that last folder then."""
        layer = None if self.source.value == "file" else self.layer.value
        if layer is None:
            src = self._source_mla()
            out = None if src is None else suggest_output(src, "", src.parent)
        else:
            parent = layer.source.parent
            block = layer.metadata.get(KEY) or {}
            made_for = parent.source.path if parent is not None else block.get("made_for")
            folder = Path(made_for).parent if made_for else _open_folder()
            own = layer.source.path or block.get("path")
            out = suggest_output(Path(own) if own else None, layer.name, folder)
        if out is not None and in_sample_folder(out):
            out = _open_folder() / out.name
        return out

    def _on_source(self, _value: Any = None) -> None:
        is_file = self.source.value == "file"
        self.layer.visible, self.source_file.visible = not is_file, is_file
        src = self._source_mla()
        self.in_place.enabled = src is not None and not in_sample_folder(src)
        if not self.in_place.enabled:
            self.in_place.value = False
        ndim = self._source_ndim()
        if ndim:
            self._fit_tuples(ndim)
        output = self._suggest_output()
        if output is not None:
            self.output.value = output

    def _source_ndim(self) -> int | None:
        """Axes of the source: the layer's, or the stored array's of the file (None for a
        file without an array or one that cannot be read: running reports it)."""
        if self.source.value != "file":
            return None if self.layer.value is None else self.layer.value.ndim
        src = self._source_mla()
        if src is None:
            return None
        from mlarray.io import read_meta

        try:
            shape = read_meta(src).spatial.shape
        except (MLArrayError, OSError):
            return None
        return len(shape) if shape else None

    def _fit_tuples(self, ndim: int) -> None:
        """One chunk/block entry per axis of the source (layer axes, or the file's)."""
        for attr, default in (("chunk_size", 256), ("block_size", 64)):
            old = getattr(self, attr)
            if len(old.value) == ndim:
                continue
            new = _sizes(old.label, (default,) * ndim, visible=old.visible)
            new.changed.connect(self._on_field)
            index = self.index(old)
            self.remove(old)
            self.insert(index, new)
            setattr(self, attr, new)

    # ----------------------------------------------------------------- run
    def _job(self) -> tuple[Any, Path, dict[str, Any]]:
        """Source, destination and keywords of :func:`recompress`, checked by the library."""
        from mlarray.layout import resolve_storage

        storage = self.storage()
        src = self._source_mla()
        if self.in_place.value:
            if src is None:
                raise ValueError("in place: the source is not an .mla file on disk")
            dst = src
        elif not self.output.value or str(self.output.value) in ("", "."):
            raise ValueError("output: choose where to write the .mla file")
        else:
            dst = Path(self.output.value)
            dst = dst if dst.suffix.lower() == ".mla" else dst.with_name(dst.name + ".mla")
        if self.source.value == "file":
            if src is None:
                raise ValueError("file: choose an existing .mla file")
            from mlarray import MLArray

            arr = MLArray.open(src)
            if arr.shape is not None:
                resolve_storage(arr.shape, arr.dtype, **storage)
            return src, dst, {"storage": storage}
        if self.layer.value is None:
            raise ValueError("layer: add an image or labels layer to the viewer first")
        layer_data = self.layer.value.as_layer_data_tuple()
        axes = stored_axes(layer_data)  # layer axis of each stored axis
        data = layer_data[0]
        for key in ("chunk_size", "block_size"):
            sizes = storage.get(key)
            if isinstance(sizes, list):
                # an RGB layer's colour axis has no field (napari's ndim leaves it out): whole
                storage[key] = [
                    1 if a is None else sizes[a] if a < len(sizes) else int(data.shape[a])
                    for a in axes
                ]
        shape = [1 if a is None else data.shape[a] for a in axes]
        resolve_storage(shape, data.dtype, **storage)
        if self.in_place.value and (self.layer.value.metadata.get(KEY) or {}).get("channel"):
            # one channel of its file: overwriting the file recompresses all its channels
            return src, dst, {"storage": storage}
        return layer_data, dst, {"storage": storage, "source_path": src}

    def start(self, _value: Any = None) -> None:
        """Start recompressing in a worker thread (what *Recompress* does)."""
        from napari.qt.threading import create_worker

        if self.worker is not None and self.worker.is_running:
            return
        try:
            source, dst, kwargs = self._job()
        except (ValueError, TypeError, OSError, MLArrayError) as exc:
            self._show_error(exc)
            return
        pbar = self.pbar = napari.utils.progress(total=1, desc=f"Recompress -> {dst.name}")

        @ensure_main_thread
        def step(done: int, total: int) -> None:
            if not pbar.disable:
                pbar.total = max(int(total), 1)
                pbar.update(int(done) - pbar.n)

        self.status.value = f"Writing {dst.name} ..."
        self.run_button.enabled = False
        self.result = None
        worker = create_worker(
            recompress, source, dst, progress=step, **kwargs, _ignore_errors=True
        )
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._show_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def _on_done(self, result: RecompressResult) -> None:
        self.result = result
        self.status.value = result.summary()

    def _show_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_warning

        self.status.value = f"Error: {exc}"
        show_warning(f"Recompress .mla failed: {exc}")

    def _on_finished(self) -> None:
        if self.pbar is not None:
            self.pbar.close()
        self.run_button.enabled = True
