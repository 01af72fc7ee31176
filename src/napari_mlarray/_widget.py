"""The "Recompress .mla" dock widget.

Thin magicgui glue over :mod:`napari_mlarray._settings` (presets and storage
dicts) and :mod:`napari_mlarray._recompress` (the job): pick an image or labels
layer or an ``.mla`` file, pick a preset or codec / level / filter / layout,
press *Recompress*. The job runs in a napari worker thread; its progress
callback feeds the progress bar, and the sizes, ratios and time are shown when
it is done.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)

from mlarray.errors import MLArrayError
from napari_mlarray._recompress import (
    RecompressResult,
    format_bytes,
    iter_progress,
    layer_source_path,
    recompress_file,
    recompress_layer,
)
from napari_mlarray._settings import (
    CODECS,
    FILTERS,
    PRESETS,
    CompressionSettings,
    load_default_settings,
    storage_for,
    storage_in_stored_order,
)
from napari_mlarray._writer import stored_axes

if TYPE_CHECKING:
    import napari

__all__ = ["RecompressWidget"]

_LAYOUT_CHOICES = [
    ("Patch size (training reads)", "patch"),
    ("Explicit chunks / blocks", "explicit"),
    ("Large chunks (archiving)", "large"),
]
_SOURCE_CHOICES = [("Layer", "layer"), ("File on disk", "file")]


def _fmt_size_text(size: Any) -> str:
    if size is None:
        return ""
    if isinstance(size, int):
        return str(size)
    return ", ".join(str(s) for s in size)


def _path_or_none(value: Any) -> Path | None:
    if value is None or str(value).strip() in ("", "."):
        return None
    return Path(value)


def _run_job(job, *args, **kwargs):
    """:func:`iter_progress` that returns the job's error instead of raising it.

    superqt takes a ``RuntimeError`` raised in a generator worker for a deleted
    worker: it then emits neither ``errored`` nor ``finished``, and the widget
    would wait forever. The library's layout and path errors are RuntimeErrors.
    """
    try:
        return (yield from iter_progress(job, *args, **kwargs))
    except Exception as exc:  # shown to the user by _on_done
        # wrapped: superqt also drops a *returned* RuntimeError (missing files are one)
        return _Failed(exc)


class _Failed:
    """A job's error, carried to the GUI thread as a plain value."""

    def __init__(self, error: Exception):
        self.error = error


class RecompressWidget(Container):
    """Recompress an image/labels layer or an ``.mla`` file with new settings.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers can be picked (napari passes it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._syncing = False
        #: the running (or last) worker, for tests and callers
        self.worker = None
        #: the last successful result
        self.result: RecompressResult | None = None

        self.source = RadioButtons(
            label="Source", choices=_SOURCE_CHOICES, value="layer", orientation="horizontal"
        )
        self.layer = ComboBox(label="Layer", choices=self._layer_choices, nullable=True)
        self.source_file = FileEdit(label="File", mode="r", filter="*.mla")
        self.preset = ComboBox(
            label="Preset",
            choices=[("Custom", "custom")] + [(p.label, k) for k, p in PRESETS.items()],
            value="custom",
        )
        self.codec = ComboBox(label="Codec", choices=list(CODECS))
        self.clevel = SpinBox(label="Level", min=0, max=9)
        self.filter = ComboBox(label="Filter", choices=list(FILTERS))
        self.layout_mode = ComboBox(label="Layout", choices=_LAYOUT_CHOICES)
        self.patch_size = LineEdit(label="Patch size", tooltip="192 or 128, 128, 64")
        self.chunk_size = LineEdit(label="Chunk size", tooltip="one value per axis: 32, 256, 256")
        self.block_size = LineEdit(label="Block size", tooltip="one value per axis: 8, 64, 64")
        self.output = FileEdit(label="Output", mode="w", filter="*.mla")
        self.in_place = CheckBox(text="Overwrite the source file (atomic)")
        self.run_button = PushButton(text="Recompress")
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.current = Label(label="Current", value="-")
        self.resulting = Label(label="Result", value="-")
        self.elapsed = Label(label="Time", value="-")
        self.status = Label(label="Status", value="-")
        self.status.native.setWordWrap(True)
        for label in (self.current, self.resulting):
            label.tooltip = "size, and compression ratio (uncompressed size / size)"
        setting_widgets = (
            self.codec,
            self.clevel,
            self.filter,
            self.layout_mode,
            self.patch_size,
            self.chunk_size,
            self.block_size,
        )
        self.extend(
            [
                self.source,
                self.layer,
                self.source_file,
                self.preset,
                *setting_widgets,
                self.output,
                self.in_place,
                self.run_button,
                self.progress,
                self.current,
                self.resulting,
                self.elapsed,
                self.status,
            ]
        )

        preset, settings = load_default_settings()
        self._show_settings(settings)
        self.preset.value = preset

        self.preset.changed.connect(self._on_preset)
        for widget in setting_widgets:
            widget.changed.connect(self._on_manual_change)
        self.layout_mode.changed.connect(self._update_visibility)
        self.source.changed.connect(self._on_source_changed)
        self.layer.changed.connect(self._on_source_changed)
        self.source_file.changed.connect(self._on_source_changed)
        self.run_button.changed.connect(self.start)
        events = self._viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            getattr(events, name).connect(self._refresh_layers)

        active = self._viewer.layers.selection.active
        if active is not None and active in self.layer.choices:
            self.layer.value = active
        self._update_visibility()
        self._on_source_changed()

    # ---------------------------------------------------------------- sources
    def _layer_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image, Labels

        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Image | Labels) and not layer.multiscale
        ]

    def _refresh_layers(self, _event=None) -> None:
        self.layer.reset_choices()

    def _source_path(self) -> Path | None:
        """The ``.mla`` file of the current source, if it has one."""
        if self.source.value == "file":
            path = _path_or_none(self.source_file.value)
            return path if path is not None and path.is_file() else None
        layer = self.layer.value
        return None if layer is None else layer_source_path(None, layer.source)

    def _on_source_changed(self, _value=None) -> None:
        is_file = self.source.value == "file"
        self.layer.visible = not is_file
        self.source_file.visible = is_file
        src = self._source_path()
        self.in_place.enabled = src is not None
        if src is None:
            self.in_place.value = False
        self._suggest_output(src)
        self.current.value = self._describe_current()

    def _suggest_output(self, src: Path | None) -> None:
        if src is not None:
            self.output.value = src.with_name(f"{src.stem}_recompressed.mla")
        elif self.source.value == "layer" and self.layer.value is not None:
            self.output.value = Path.cwd() / f"{self.layer.value.name}.mla"

    def _describe_current(self) -> str:
        try:
            if self.source.value == "file":
                src = self._source_path()
                if src is None:
                    return "no file chosen"
                from mlarray import MLArray

                arr = MLArray.open(src)
                size = src.stat().st_size
                if arr.shape is None:
                    return f"{format_bytes(size)} on disk (no array)"
                nbytes = arr.dtype.itemsize * math.prod(arr.shape)
                return f"{format_bytes(size)} on disk, {nbytes / size:.2f}x"
            layer = self.layer.value
            if layer is None:
                return "no layer chosen"
            data = layer.data
            nbytes = data.dtype.itemsize * math.prod(data.shape)
            src = layer_source_path(None, layer.source)
            if src is not None:
                size = src.stat().st_size
                return f"{format_bytes(size)} on disk, {nbytes / size:.2f}x"
            return f"{format_bytes(nbytes)} in memory, 1.00x"
        except (OSError, ValueError, TypeError, MLArrayError) as exc:
            return f"unknown ({exc})"

    # --------------------------------------------------------------- settings
    def _show_settings(self, settings: CompressionSettings) -> None:
        self._syncing = True
        try:
            self.codec.value = settings.codec
            self.clevel.value = settings.clevel
            self.filter.value = settings.filter
            self.layout_mode.value = settings.layout
            self.patch_size.value = _fmt_size_text(settings.patch_size) or "192"
            self.chunk_size.value = _fmt_size_text(settings.chunk_size)
            self.block_size.value = _fmt_size_text(settings.block_size)
        finally:
            self._syncing = False
        self._update_visibility()

    def _on_preset(self, key: str) -> None:
        if key in PRESETS:
            self._show_settings(PRESETS[key].settings)
            self.status.value = PRESETS[key].description

    def _on_manual_change(self, _value=None) -> None:
        if not self._syncing:
            self.preset.value = "custom"

    def _update_visibility(self, _value=None) -> None:
        mode = self.layout_mode.value
        self.patch_size.visible = mode == "patch"
        self.chunk_size.visible = mode == "explicit"
        self.block_size.visible = mode == "explicit"

    def settings(self) -> CompressionSettings:
        """The settings as currently shown.

        Returns
        -------
        CompressionSettings

        Raises
        ------
        ValueError
            For an invalid level or unparsable sizes; the message names the field.
        """
        mode = self.layout_mode.value
        return CompressionSettings(
            codec=self.codec.value,
            clevel=self.clevel.value,
            filter=self.filter.value,
            layout=mode,
            patch_size=self.patch_size.value if mode == "patch" else None,
            chunk_size=self.chunk_size.value if mode == "explicit" else None,
            block_size=self.block_size.value if mode == "explicit" else None,
        )

    # -------------------------------------------------------------------- run
    def _destination(self) -> Path:
        if self.in_place.value:
            src = self._source_path()
            if src is None:
                raise ValueError("in place: the source is not an .mla file on disk")
            return src
        dst = _path_or_none(self.output.value)
        if dst is None:
            raise ValueError("output: choose where to write the .mla file")
        if dst.suffix != ".mla":
            dst = dst.with_name(dst.name + ".mla")
        return dst

    def _make_job(self) -> tuple[Any, tuple, dict[str, Any]]:
        settings = self.settings()
        dst = self._destination()
        if self.source.value == "file":
            src = self._source_path()
            if src is None:
                raise ValueError("file: choose an existing .mla file")
            from mlarray import MLArray

            arr = MLArray.open(src)
            if arr.shape is None:  # metadata only: the layout does not matter
                storage = {"cparams": settings.cparams, "dparams": settings.dparams}
            else:
                storage = storage_for(settings, arr.shape, arr.dtype)
            return recompress_file, (src, dst), {"storage": storage}
        layer = self.layer.value
        if layer is None:
            raise ValueError("layer: add an image or labels layer to the viewer first")
        layer_data = layer.as_layer_data_tuple()
        data = layer_data[0]
        storage = storage_for(settings, data.shape, data.dtype)  # sizes in layer order
        storage = storage_in_stored_order(storage, stored_axes(layer_data))
        kwargs = {"storage": storage, "source_path": layer_source_path(None, layer.source)}
        return recompress_layer, (layer_data, dst), kwargs

    def start(self, _value=None) -> None:
        """Start recompressing in a worker thread (what *Recompress* does)."""
        from napari.qt.threading import create_worker

        if self.worker is not None and self.worker.is_running:
            return
        try:
            job, args, kwargs = self._make_job()
        except (ValueError, OSError, MLArrayError) as exc:
            self._show_error(exc)
            return
        self.progress.max = 1
        self.progress.value = 0
        self.resulting.value = "-"
        self.elapsed.value = "-"
        self.status.value = f"Writing {Path(args[1]).name} ..."
        self.run_button.enabled = False
        worker = create_worker(_run_job, job, *args, **kwargs, _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._show_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def _on_progress(self, value: tuple[int, int]) -> None:
        done, total = value
        self.progress.max = max(int(total), 1)
        self.progress.value = min(int(done), self.progress.max)

    def _on_done(self, result: RecompressResult | _Failed) -> None:
        if isinstance(result, _Failed):
            self._show_error(result.error)
            return
        self.result = result
        self.progress.value = self.progress.max
        where = "on disk" if result.before_on_disk else "in memory"
        self.current.value = (
            f"{format_bytes(result.before_bytes)} {where}, {result.ratio_before:.2f}x"
        )
        self.resulting.value = f"{format_bytes(result.after_bytes)}, {result.ratio_after:.2f}x"
        self.elapsed.value = f"{result.seconds:.2f} s"
        self.status.value = f"Wrote {result.path}"

    def _show_error(self, exc: BaseException) -> None:
        self.status.value = f"Error: {exc}"
        try:
            from napari.utils.notifications import show_warning
        except ImportError:  # pragma: no cover - napari is there when the widget is
            return
        show_warning(f"Recompress .mla failed: {exc}")

    def _on_finished(self) -> None:
        self.run_button.enabled = True
