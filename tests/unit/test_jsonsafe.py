"""Results as JSON: what JSON can hold stays as it is, everything else gets a stand-in in place."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import math

import pytest

from runner.jsonsafe import REPR_LIMIT, json_safe, placeholder

pytestmark = pytest.mark.timeout(5)


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Long:
    def __repr__(self) -> str:
        return "x" * 1000


class Colour(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -7, 2**70, 1.5, "", "héllo ✓", [], {}, [1, "a", None, {"k": [2.5]}]],
)
def test_json_values_come_back_unchanged(value: object) -> None:
    assert json_safe(value) == value
    assert json.loads(json.dumps(json_safe(value))) == value


def test_stand_in_names_type_module_and_repr() -> None:
    assert json_safe(Opaque()) == {"_type": "Opaque", "_module": __name__, "_repr": "Opaque()"}


def test_stand_in_replaces_only_the_leaf_and_keeps_the_rest() -> None:
    when = datetime.datetime(2026, 1, 1, 10, 30)
    result = json_safe({"count": 3, "when": when, "items": [1, Opaque(), {"ok": True}]})
    assert result == {
        "count": 3,
        "when": {
            "_type": "datetime",
            "_module": "datetime",
            "_repr": "datetime.datetime(2026, 1, 1, 10, 30)",
        },
        "items": [1, {"_type": "Opaque", "_module": __name__, "_repr": "Opaque()"}, {"ok": True}],
    }
    json.dumps(result)  # the whole thing is now serialisable


def test_tuple_becomes_a_list() -> None:
    assert json_safe((1, (2, "x"))) == [1, [2, "x"]]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float_is_a_stand_in_because_json_cannot_hold_it(value: float) -> None:
    safe = json_safe({"x": value})
    assert safe["x"]["_type"] == "float"
    assert safe["x"]["_repr"] == repr(value)
    json.dumps(safe, allow_nan=False)


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), (b"raw", "bytes"), (decimal.Decimal("1.10"), "Decimal")],
)
def test_other_builtin_values_get_stand_ins(value: object, type_name: str) -> None:
    assert json_safe([value])[0]["_type"] == type_name


def test_int_subclass_is_kept_as_a_plain_number() -> None:
    safe = json_safe({"colour": Colour.RED})
    assert safe == {"colour": 1}
    assert json.dumps(safe) == '{"colour": 1}'


def test_dict_with_non_string_keys_is_a_stand_in() -> None:
    safe = json_safe({"ok": 1, "mapping": {1: "a"}})
    assert safe["ok"] == 1
    assert safe["mapping"]["_type"] == "dict"
    assert safe["mapping"]["_repr"] == "{1: 'a'}"


def test_long_repr_is_cut_short() -> None:
    stand_in = placeholder(Long())
    assert len(stand_in["_repr"]) == REPR_LIMIT
    assert stand_in["_repr"].endswith("...")


def test_broken_repr_does_not_raise() -> None:
    assert json_safe(BrokenRepr())["_repr"] == "<repr failed: RuntimeError>"


def test_self_referencing_list_terminates() -> None:
    loop: list[object] = []
    loop.append(loop)
    json.dumps(json_safe(loop))  # depth-limited: a stand-in somewhere down, no RecursionError
