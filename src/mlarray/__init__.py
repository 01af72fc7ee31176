"""mlarray: the ``.mla`` medical-image array format (Blosc2 container + metadata record).

>>> from mlarray import MLArray
>>> img = MLArray.open("case_0001.mla")          # lazy, memory-mapped
>>> patch = img[10:74, 20:84, 30:94]              # decompresses only what it needs
"""

from mlarray.errors import (
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
from mlarray.layout import DEFAULT_PATCH_SIZE
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

__version__ = "0.1.0"

#: Default patch size per spatial axis for the chunk/block layout (as the reference's).
MLARRAY_DEFAULT_PATCH_SIZE = DEFAULT_PATCH_SIZE

__all__ = [
    "MLARRAY_DEFAULT_PATCH_SIZE",
    "AxisLabel",
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
]
