"""Chunk/block layout functions under the names the reference package exports.

The reference ships four experimental strategies here; its ``MLArray`` uses
``comp_blosc2_params_spatial_only_magnitude``. This package has one layout
rule, :func:`mlarray.layout.comp_blosc2_params` (what ``MLArray`` uses), and
every name below returns it with the defaults the reference's function of that
name has. Code importing these names runs unchanged; any layout is valid on disk,
a layout only changes speed.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlarray.layout import comp_blosc2_params

__all__ = [
    "comp_blosc2_params_baseline",
    "comp_blosc2_params_generalized",
    "comp_blosc2_params_spatial_only",
    "comp_blosc2_params_spatial_only_magnitude",
]


def comp_blosc2_params_spatial_only(
    image_size: Sequence[int],
    patch_size: Sequence[int],
    spatial_axis_mask: Sequence[bool] | None = None,
    bytes_per_pixel: int = 4,
    l1_cache_size_per_core_in_bytes: int = 32768,
    l3_cache_size_per_core_in_bytes: int = 1441792,
    safety_factor: float = 0.9,
) -> tuple[list[int], list[int]]:
    """:func:`mlarray.layout.comp_blosc2_params` (default ``safety_factor`` 0.9, as the
    reference's function of this name)."""
    return comp_blosc2_params(
        image_size,
        patch_size,
        spatial_axis_mask,
        bytes_per_pixel,
        l1_cache_size_per_core_in_bytes,
        l3_cache_size_per_core_in_bytes,
        safety_factor,
    )


#: The reference's other strategies: here the single layout rule itself (same
#: arguments and defaults as the reference's ``..._spatial_only_magnitude``).
comp_blosc2_params_spatial_only_magnitude = comp_blosc2_params
comp_blosc2_params_baseline = comp_blosc2_params
comp_blosc2_params_generalized = comp_blosc2_params
