"""The shared name -> entry table behind the backbone, head, strategy and CAM-method registries."""

from __future__ import annotations

import pytest

from medcli.errors import MedcliError
from medcli.gradcam import list_methods
from medcli.models import list_backbones
from medcli.registry import Registry


def test_duplicates_are_refused_unless_overwritten():
    reg: Registry[int] = Registry("widget")
    reg.add("b", 1)
    with pytest.raises(ValueError, match="widget 'b' is already registered"):
        reg.add("b", 2)
    reg.add("b", 3, overwrite=True)
    assert reg.get("b") == 3


def test_names_sorted_or_in_registration_order_and_unknown_names_list_them():
    for sort, expected in ((True, ["a", "c"]), (False, ["c", "a"])):
        reg: Registry[str] = Registry("widget", sort=sort)
        reg.add("c", "C")
        reg.add("a", "A")
        assert reg.names() == expected
    with pytest.raises(MedcliError, match="unknown widget 'b': choose one of c, a"):
        reg.get("b")


def test_the_registries_keep_their_orders():
    assert list_backbones() == sorted(list_backbones())
    assert list_methods()[:2] == ["gradcam", "gradcam++"]  # registration order, as offered in the config schema
