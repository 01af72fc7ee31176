"""mlarray: the ``.mla`` medical-image array format (Blosc2 container + metadata record).

>>> from mlarray import MLArray
>>> img = MLArray.open("case_0001.mla")          # lazy, memory-mapped
>>> patch = img[10:74, 20:84, 30:94]              # decompresses only what it needs

The public names are imported on first use (PEP 562): ``import mlarray`` itself loads
neither python-blosc2 nor the array class, so that a reader that only needs the
metadata and a few planes (the napari plugin's first frame) does not pay for them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_WHERE = {
    "ClosedError": "mlarray.errors",
    "InvalidModeError": "mlarray.errors",
    "InvalidPathError": "mlarray.errors",
    "LayoutError": "mlarray.errors",
    "MetaTypeError": "mlarray.errors",
    "MetaValidationError": "mlarray.errors",
    "MLArrayError": "mlarray.errors",
    "MLArrayFileNotFoundError": "mlarray.errors",
    "MLArrayFormatError": "mlarray.errors",
    "MLArrayIOError": "mlarray.errors",
    "NoArrayError": "mlarray.errors",
    "ReadOnlyError": "mlarray.errors",
    "UnsafeRecordError": "mlarray.errors",
    "AxisLabel": "mlarray.meta",
    "CoordSystem": "mlarray.meta",
    "Meta": "mlarray.meta",
    "MetaBbox": "mlarray.meta",
    "MetaBlosc2": "mlarray.meta",
    "MetaExtra": "mlarray.meta",
    "MetaHasArray": "mlarray.meta",
    "MetaImageFormat": "mlarray.meta",
    "MetaIsSeg": "mlarray.meta",
    "MetaSource": "mlarray.meta",
    "MetaSpatial": "mlarray.meta",
    "MetaStatistics": "mlarray.meta",
    "MetaVersion": "mlarray.meta",
    "MLArray": "mlarray.mlarray",
    "is_serializable": "mlarray.utils",
    "cli_print_header": "mlarray.cli",
    "cli_convert_to_mlarray": "mlarray.cli",
}
# names bound under another name in their module
_RENAMED = {
    "DEFAULT_PATCH_SIZE": ("mlarray.layout", "DEFAULT_PATCH_SIZE"),
    #: Default patch size per spatial axis for the chunk/block layout (as the reference's).
    "MLARRAY_DEFAULT_PATCH_SIZE": ("mlarray.layout", "DEFAULT_PATCH_SIZE"),
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module, attr = _WHERE[name], name
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
    elif (
        name.isidentifier()
        and not name.startswith("_")
        and importlib.util.find_spec(f"mlarray.{name}") is not None
    ):
        # a submodule (``mlarray.io``...): importing binds it here as an attribute
        return importlib.import_module(f"mlarray.{name}")
    else:
        raise AttributeError(f"module 'mlarray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE, *_RENAMED})


if TYPE_CHECKING:  # for type checkers and IDEs: the names as plain imports
    from mlarray.cli import cli_convert_to_mlarray, cli_print_header
    from mlarray.errors import (
        ClosedError,
        InvalidModeError,
        InvalidPathError,
        LayoutError,
        MetaTypeError,
        MetaValidationError,
        MLArrayError,
        MLArrayFileNotFoundError,
        MLArrayFormatError,
        MLArrayIOError,
        NoArrayError,
        ReadOnlyError,
        UnsafeRecordError,
    )
    from mlarray.layout import DEFAULT_PATCH_SIZE as MLARRAY_DEFAULT_PATCH_SIZE
    from mlarray.meta import (
        AxisLabel,
        CoordSystem,
        Meta,
        MetaBbox,
        MetaBlosc2,
        MetaExtra,
        MetaHasArray,
        MetaImageFormat,
        MetaIsSeg,
        MetaSource,
        MetaSpatial,
        MetaStatistics,
        MetaVersion,
    )
    from mlarray.mlarray import MLArray
    from mlarray.utils import is_serializable

__all__ = [
    "MLARRAY_DEFAULT_PATCH_SIZE",
    "AxisLabel",
    "ClosedError",
    "CoordSystem",
    "InvalidModeError",
    "InvalidPathError",
    "LayoutError",
    "MLArray",
    "MLArrayError",
    "MLArrayFileNotFoundError",
    "MLArrayFormatError",
    "MLArrayIOError",
    "Meta",
    "MetaBbox",
    "MetaBlosc2",
    "MetaExtra",
    "MetaHasArray",
    "MetaImageFormat",
    "MetaIsSeg",
    "MetaSource",
    "MetaSpatial",
    "MetaStatistics",
    "MetaTypeError",
    "MetaValidationError",
    "MetaVersion",
    "NoArrayError",
    "ReadOnlyError",
    "UnsafeRecordError",
    "__version__",
    "cli_convert_to_mlarray",
    "cli_print_header",
    "is_serializable",
]
