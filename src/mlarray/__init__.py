"""mlarray: the ``.mla`` medical-image array format (Blosc2 container + metadata record).

>>> from mlarray import MLArray
>>> img = MLArray.open("case_0001.mla")          # lazy, memory-mapped
>>> patch = img[10:74, 20:84, 30:94]              # decompresses only what it needs
"""

from mlarray.errors import (
    InvalidModeError,
    InvalidPathError,
    MetaValidationError,
    MLArrayError,
    MLArrayFileNotFoundError,
    MLArrayFormatError,
    MLArrayIOError,
    NoArrayError,
    ReadOnlyError,
    UnsafeRecordError,
)
from mlarray.meta import Meta
from mlarray.mlarray import MLArray

__version__ = "0.1.0"

__all__ = [
    "InvalidModeError",
    "InvalidPathError",
    "MLArray",
    "MLArrayError",
    "MLArrayFileNotFoundError",
    "MLArrayFormatError",
    "MLArrayIOError",
    "Meta",
    "MetaValidationError",
    "NoArrayError",
    "ReadOnlyError",
    "UnsafeRecordError",
    "__version__",
]
