"""JSON in and out of the HTTP layer, and off the bus's wire: orjson's speed, the standard library's answers.

orjson parses and writes several times faster than `json`, which shows on the predict path, but
it differs at the edges: it reads integers of 19 digits or more as floats, refuses what `json`
accepts (UTF-16 bodies, a BOM, lone surrogates, numbers that overflow to infinity), and writes
NaN and infinity as `null` where `json` (as Starlette calls it) raises. So orjson's answer is
taken only where it is the standard library's, and everything else goes to `json`, which then
decides exactly as before: the same values, the same errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson
from starlette.responses import JSONResponse

# An integer orjson would read inexactly (past 64 bits) has at least 19 digits in a row.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
# Plain types only: anything else (a dataclass, a datetime, a subclass) goes to `json`, which refuses what it refused.
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def loads(data: bytes, parse_constant: Callable[[str], Any]) -> Any:
    """`json.loads(data, parse_constant=parse_constant)`, fast for the usual body; raises what it raises."""
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # let the standard library decide, and word the error
    return json.loads(data, parse_constant=parse_constant)


def parse(data: bytes) -> Any:
    """`json.loads(data)` exactly (NaN and the infinities included, as `json.dumps` writes them), fast.

    For what Skipper itself wrote (bus messages): their bytes stay the standard library's
    (pinned by the wire's golden tests); only the reading is faster.
    """
    return loads(data, float)


def dumps(content: Any) -> bytes:
    """What Starlette's `JSONResponse` writes (compact, UTF-8, NaN refused), fast for plain data."""
    try:
        out = orjson.dumps(content, option=_STRICT)
    except TypeError:  # a type orjson leaves alone, an integer past 64 bits, a lone surrogate
        out = None
    if out is None or b"null" in out:  # orjson writes NaN as null: only `json` can tell them apart
        out = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
    return out


class FastJSONResponse(JSONResponse):
    """A `JSONResponse` rendered by `dumps`."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
