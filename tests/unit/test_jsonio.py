"""The fast JSON path answers exactly what the standard library answers, at the edges too."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from skipper.core import jsonio
from skipper.core.errors import BadRequest
from skipper.core.pipeline import loads


def _reject(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


@pytest.mark.parametrize("raw", [
    b'{"instances": [[0.038, -0.044, 1e-7, 3]]}',
    b"12345678901234567890123",  # an integer past 64 bits: exact, not a float
    b"-9223372036854775809",  # just below int64: orjson alone would read a float
    b"[1e400, -1e400]",  # overflow to infinity, as json reads it
    '{"a": "\u00e9"}'.encode("utf-16"),  # json detects UTF-16
    b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte order mark
    b'"\\ud800"',  # a lone surrogate escape
    b'{"a": 1, "a": 2}',
])
def test_loads_reads_what_json_reads(raw: bytes) -> None:
    expected = json.loads(raw, parse_constant=_reject)
    got = jsonio.loads(raw, _reject)
    assert repr(got) == repr(expected) and type(got) is type(expected)


@pytest.mark.parametrize("raw", [b'{"instances": [[NaN]]}', b"[Infinity]", b'{"a": ', b"\xff\xfe\xfa", b"[1,]"])
def test_loads_refuses_what_json_refuses_with_its_words(raw: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(raw, parse_constant=_reject)
    with pytest.raises(ValueError) as got:
        jsonio.loads(raw, _reject)
    assert str(got.value) == str(expected.value)
    with pytest.raises(BadRequest, match="not valid JSON"):
        loads(raw)


@pytest.mark.parametrize("content", [
    {"predictions": [0.1, -2.5e-7, 1e29], "model": "diabetes", "model_version": 3},
    {"error": {"code": "x", "message": "caf\u00e9", "details": {"field": None}}},
    {"n": 2**70, "keys": {1: "int key"}},  # past 64 bits; a non-string key
])
def test_dumps_writes_what_json_writes(content: Any) -> None:
    expected = json.loads(json.dumps(content, ensure_ascii=False, allow_nan=False))
    assert json.loads(jsonio.dumps(content)) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_nan_like_starlette(value: float) -> None:
    with pytest.raises(ValueError):
        jsonio.dumps({"predictions": [value]})
    with pytest.raises(ValueError):
        jsonio.FastJSONResponse({"predictions": [value]})


@pytest.mark.parametrize("raw", [
    b'{"model": "diabetes", "instances": [[0.038, -0.044, 1e-07, 3]]}',
    b'{"predictions": [NaN, Infinity, -Infinity]}',  # as json.dumps writes them; orjson alone refuses them
    b'{"n": 123456789012345678901234567890}',  # past 64 bits: exact
    b'{"a": "caf\\u00e9", "b": "\xc3\xa9"}',
])
def test_parse_reads_bus_messages_as_json_does(raw: bytes) -> None:
    expected = json.loads(raw)
    got = jsonio.parse(raw)
    assert repr(got) == repr(expected)
