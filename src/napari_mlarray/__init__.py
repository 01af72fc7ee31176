"""napari plugin for ``.mla`` files. Contributions are wired through ``napari.yaml``."""

__version__ = "0.1.0"
