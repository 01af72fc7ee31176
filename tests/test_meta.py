"""Meta dataclasses: parsing on creation and mutation, (de)serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import MetaValidationError
from mlarray.meta import (
    META_PARTS,
    AxisLabelEnum,
    Meta,
    MetaBbox,
    MetaBlosc2,
    MetaExtra,
    MetaHasArray,
    MetaIsSeg,
    MetaSource,
    MetaSpatial,
    MetaStatistics,
    MetaVersion,
    _meta_internal_write,
)

FORMAT_KEYS = [
    "source",
    "extra",
    "spatial",
    "stats",
    "bbox",
    "is_seg",
    "blosc2",
    "_has_array",
    "_image_meta_format",
    "_mlarray_version",
]


def test_default_meta_mapping_has_the_format_key_set_in_order():
    m = Meta().to_mapping()
    assert list(m) == FORMAT_KEYS
    # a Meta of its own holds it wrapped (as the reference); bare "v0" once an MLArray holds it
    assert m["_mlarray_version"] == {"mlarray_version": None}
    assert MLArray(np.zeros(3)).meta.to_mapping()["_mlarray_version"] == "v0"
    assert m["is_seg"] == {"is_seg": None}
    assert m["_has_array"] == {"has_array": False}
    assert list(m["spatial"]) == [
        "spacing",
        "origin",
        "direction",
        "affine",
        "shape",
        "axis_labels",
        "coord_system",
        "axis_units",
        "_num_spatial_axes",
        "_num_non_spatial_axes",
    ]


def test_from_mapping_names_every_unknown_key():
    with pytest.raises(KeyError, match=r"\['bogus', 'zzz'\]"):
        Meta.from_mapping({"zzz": 1, "bogus": 2, "is_seg": True})
    with pytest.raises(KeyError, match="spacingg"):
        MetaSpatial.from_mapping({"spacingg": [1, 2]})


def test_from_mapping_rejects_non_mapping():
    with pytest.raises(TypeError):
        MetaSpatial.from_mapping([1, 2, 3])


def test_single_key_metas_accept_wrapped_and_bare():
    assert MetaIsSeg.ensure({"is_seg": True}).is_seg is True
    assert MetaIsSeg.ensure(False).is_seg is False
    assert MetaSource.ensure({"data": {"a": 1}}).data == {"a": 1}
    assert MetaSource.ensure({"case": "x"}).data == {"case": "x"}
    assert MetaVersion.ensure("v0").mlarray_version == "v0"
    assert MetaHasArray.ensure({"has_array": True}).has_array is True
    with pytest.raises(KeyError):
        MetaIsSeg.from_mapping({"is_seg": True, "other": 1})


def test_fields_are_validated_on_creation_and_on_mutation():
    with pytest.raises(MetaValidationError, match=r"spatial\.spacing"):
        MetaSpatial(spacing=[1.0, "x"])
    sp = MetaSpatial(spacing=[1, 2, 3])
    assert sp.spacing == [1.0, 2.0, 3.0]
    with pytest.raises(MetaValidationError, match=r"spatial\.spacing"):
        sp.spacing = [1.0, float("nan"), 1.0]
    assert sp.spacing == [1.0, 2.0, 3.0], "a refused assignment must leave the old value"
    with pytest.raises(MetaValidationError, match="is_seg"):
        MetaIsSeg("yes")
    with pytest.raises(MetaValidationError, match=r"stats\.min"):
        MetaStatistics(min="low")


def test_cross_field_validation_on_mutation_restores_old_value():
    sp = MetaSpatial(spacing=[1, 1, 1], shape=[4, 5, 6])
    with pytest.raises(MetaValidationError, match="spatial"):
        sp.origin = [0.0, 0.0]
    assert sp.origin is None
    with pytest.raises(MetaValidationError, match="axis_labels"):
        sp.axis_labels = ["spatial", "spatial"]


def test_axis_labels_count_spatial_axes_and_accept_enum():
    sp = MetaSpatial(
        axis_labels=[AxisLabelEnum.channel, "spatial_z", "spatial_y", "spatial_x"],
        spacing=[2.0, 1.0, 1.0],
        shape=[2, 4, 5, 6],
    )
    assert sp.axis_labels == ["channel", "spatial_z", "spatial_y", "spatial_x"]
    assert sp._num_spatial_axes == 3 and sp._num_non_spatial_axes == 1
    assert sp.spatial_axis_mask == [False, True, True, True]
    with pytest.raises(MetaValidationError, match="spatial"):
        MetaSpatial(axis_labels=["channel", "spatial"], spacing=[1.0, 1.0], shape=[2, 3])


def test_geometry_shapes_are_checked():
    with pytest.raises(MetaValidationError, match="direction"):
        MetaSpatial(direction=[[1, 0, 0], [0, 1, 0]])
    with pytest.raises(MetaValidationError, match="affine"):
        MetaSpatial(affine=[[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    with pytest.raises(MetaValidationError, match="disagree"):
        MetaSpatial(spacing=[1, 1], origin=[0, 0, 0])


def test_bbox_validation():
    b = MetaBbox(bboxes=np.array([[[1, 2], [3, 4]]]), scores=[0.5], labels=["a"])
    assert b.bboxes == [[[1, 2], [3, 4]]] and len(b.bboxes) == 1 and bool(MetaBbox())
    with pytest.raises(MetaValidationError, match="min 5 > max 2"):
        MetaBbox(bboxes=[[[5, 2]]])
    with pytest.raises(MetaValidationError, match="scores"):
        MetaBbox(bboxes=[[[0, 1]]], scores=[0.1, 0.2])
    with pytest.raises(MetaValidationError, match="labels"):
        MetaBbox(bboxes=[[[0, 1]]], labels=[None])
    with pytest.raises(MetaValidationError, match="axes"):
        MetaBbox(bboxes=[[[0, 1]], [[0, 1], [2, 3]]])


def test_free_form_dicts_must_be_json_compatible():
    e = MetaExtra({"a": (1, 2), "b": np.float32(1.5), "c": {"d": [np.int64(3)]}})
    assert e.data == {"a": [1, 2], "b": 1.5, "c": {"d": [3]}}
    assert type(e.data["c"]["d"][0]) is int
    with pytest.raises(MetaValidationError, match="extra"):
        MetaExtra({"f": object()})
    assert MetaSource({1: "x"}).data == {1: "x"}  # int keys, as the reference keeps them
    with pytest.raises(MetaValidationError, match="keys must be strings, integers"):
        MetaSource({(1,): "x"})


def test_meta_accepts_plain_dicts_for_parts_and_on_assignment():
    m = Meta(is_seg=True, spatial={"spacing": [1, 2]}, bbox={"bboxes": [[[0, 1], [0, 1]]]})
    assert isinstance(m.spatial, MetaSpatial) and m.spatial.spacing == [1.0, 2.0]
    assert m.is_seg.is_seg is True
    with _meta_internal_write():
        m.blosc2 = {"chunk_size": [2, 2]}
    assert isinstance(m.blosc2, MetaBlosc2)
    m.is_seg = False
    assert m.is_seg.is_seg is False


def test_to_plain_suppresses_default_parts_and_unwraps_single_keys():
    m = Meta(source={"case": "c1"}, is_seg=True)
    assert m.to_plain() == {"source": {"case": "c1"}, "is_seg": True}
    assert Meta().to_plain() == {}


def test_to_plain_with_include_none_lists_every_part():
    # fixed-column rows per case: a default part is None, not a missing key
    row = Meta(source={"case": "c1"}).to_plain(include_none=True)
    assert set(row) == set(META_PARTS)
    assert row["source"] == {"case": "c1"}
    assert all(row[k] is None for k in META_PARTS if k != "source")


def test_copy_from_fills_only_unset_fields_unless_overwrite():
    a = Meta(spatial={"spacing": [1.0, 1.0]}, extra={"k": 1})
    b = Meta(spatial={"spacing": [2.0, 2.0], "origin": [5.0, 5.0]}, is_seg=True)
    a.copy_from(b)
    assert a.spatial.spacing == [1.0, 1.0] and a.spatial.origin == [5.0, 5.0]
    assert a.is_seg.is_seg is True and a.extra.data == {"k": 1}
    a.copy_from(b, overwrite=True)
    assert a.spatial.spacing == [2.0, 2.0] and a.extra.data == {}
    with pytest.raises(TypeError):
        a.copy_from(MetaSpatial())


def test_copy_is_deep():
    a = Meta(extra={"nested": {"x": [1]}})
    b = a.copy()
    b.extra.data["nested"]["x"].append(2)
    assert a.extra.data == {"nested": {"x": [1]}}


def test_ensure_coerces_none_instances_and_mappings():
    assert Meta.ensure(None) == Meta()
    m = Meta()
    assert Meta.ensure(m) is m
    with pytest.raises(TypeError):
        Meta.ensure(42)


def test_affine_and_spacing_origin_direction_are_never_both_set():
    # The reference package refuses a file that holds both forms.
    sp = MetaSpatial(affine=np.eye(4))
    for name, value in [("spacing", [1, 2, 3]), ("origin", [0, 0, 0]), ("direction", np.eye(3))]:
        with pytest.raises(MetaValidationError, match=rf"spatial\.affine.*{name}"):
            setattr(sp, name, value)
        assert getattr(sp, name) is None
    with pytest.raises(MetaValidationError, match=r"spatial\.affine"):
        MetaSpatial(spacing=[1, 1], affine=np.eye(3))
