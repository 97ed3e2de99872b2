"""How deep a request's JSON may nest, checked without recursion.

Python's json parser recurses once per array or object, so a body nested
deeper than the interpreter's recursion limit (about 1000 levels, less the
stack already in use) raises RecursionError instead of parsing. That limit
moves with the stack, and what parses might not encode again further down a
request's handling. So the gateway has a limit of its own, well below it:
``MAX_JSON_DEPTH``, the same for every endpoint, and says so when a body
goes past it, rather than calling a deep body invalid JSON.
"""

from __future__ import annotations

import re
from itertools import accumulate

# Nothing the APIs take nests anywhere near this (a chat's content parts, a
# tool's JSON schema); Python's parser and encoder both reach it with room
# to spare at any point of a request's handling.
MAX_JSON_DEPTH = 512

TOO_DEEP = (
    f"request body is nested too deeply: JSON arrays and objects may nest "
    f"{MAX_JSON_DEPTH} levels at most"
)

# A JSON string (escapes included): its brackets are text, not nesting.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
for _open in b"[{":
    _STEP[_open] = 1
for _close in b"]}":
    _STEP[_close] = -1


def nests_deeper(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays and objects of ``raw``, a valid JSON text, nest more
    than ``limit`` levels deep. Costs two byte counts for a body with no more
    than ``limit`` brackets (nearly every one); otherwise a few C-speed passes."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # too few brackets to nest that deep
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit
