"""Reading a passed-through request: its model, in JSON or a multipart form, in place."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.api.passthrough import form_field, read_request, upstream_content_type
from gateway.errors import APIError
from gateway.upstream.pool import Target
from gateway.upstream.replica import Upstream


def multipart(**fields: str) -> tuple[bytes, str]:
    files = {"file": ("a.wav", b'RIFF\r\n--not-a-boundary\r\nname="model"\r\n\x00\xff')}
    request = httpx.Request("POST", "http://x", data=fields, files=files)
    return request.read(), request.headers["content-type"]


def target(model: str | None) -> Target:
    return Target(Upstream("u", "http://u/v1", http=None), model)  # type: ignore[arg-type]


def test_the_model_of_a_form_is_found_and_renamed_in_place() -> None:
    raw, kind = multipart(model="whisper", language="en")
    start, end = form_field(raw, kind, "model") or (0, 0)
    assert raw[start:end] == b"whisper"
    model, stream, outgoing = read_request(raw, kind)
    assert (model, stream) == ("whisper", False)
    assert outgoing.bytes_for(target(None)) is raw and outgoing.bytes_for(target("whisper")) is raw
    renamed = outgoing.bytes_for(target("openai/whisper-large-v3"))
    assert renamed == raw.replace(b"whisper\r\n", b"openai/whisper-large-v3\r\n", 1)
    assert form_field(raw, kind, "absent") is None
    assert form_field(raw, "multipart/form-data", "model") is None  # no boundary


def test_the_boundary_parameter_is_found_however_it_is_spelled() -> None:
    raw, kind = multipart(model="whisper")
    boundary = kind.partition("boundary=")[2]
    for spelled in (f"multipart/form-data; BOUNDARY={boundary}",
                    f'multipart/form-data;boundary="{boundary}"; charset=utf-8',
                    f"Multipart/Form-Data; charset=utf-8; Boundary={boundary}"):  # fmt: skip
        assert read_request(raw, spelled)[0] == "whisper", spelled
    assert form_field(raw, f"multipart/form-data; xboundary={boundary}", "model") is None


def test_a_stream_field_in_a_form_asks_for_a_stream() -> None:
    raw, kind = multipart(model="whisper", stream="true")
    assert read_request(raw, kind)[:2] == ("whisper", True)


def test_json_bodies_go_as_sent_unless_an_alias_is_renamed() -> None:
    raw = b'{"model": "small",  "input": ["a"], "stream": true}'
    model, stream, outgoing = read_request(raw, "application/json")
    assert (model, stream) == ("small", True)
    assert outgoing.bytes_for(target(None)) is raw
    assert json.loads(outgoing.bytes_for(target("org/small-v2")))["model"] == "org/small-v2"
    model, _, outgoing = read_request(b'{"prompt": "a b"}', "")
    assert model is None and outgoing.bytes_for(target("fallback-model")) == b'{"prompt": "a b"}'


@pytest.mark.parametrize(
    "kind", ["text/plain", "Text/Plain; charset=utf-8", "", "application/octet-stream"]
)
def test_a_body_that_is_no_form_is_read_as_json_whatever_its_content_type(kind: str) -> None:
    # As chat reads its body: so the model is resolved, and nothing unchecked goes upstream.
    model, stream, outgoing = read_request(b'{"model": "small", "stream": true}', kind)
    assert (model, stream) == ("small", True)
    assert json.loads(outgoing.bytes_for(target("org/small-v2")))["model"] == "org/small-v2"
    assert upstream_content_type(kind) == "application/json"  # what it was read as
    for raw in (b'{"model": "small", "temperature": NaN}', b'{"x": [Infinity]}', b"anything"):
        with pytest.raises(APIError) as caught:
            read_request(raw, kind)
        assert (caught.value.status_code, caught.value.code) == (400, "invalid_json"), raw


def test_json_and_form_content_types_go_upstream_as_the_client_named_them() -> None:
    for kind in ("application/json", "application/json; charset=utf-8", "application/x+json"):
        assert upstream_content_type(kind) == kind
    _, form = multipart(model="whisper")
    assert upstream_content_type(form) == form
    assert read_request(b"", "text/plain")[0] is None  # no body: nothing to read


@pytest.mark.parametrize("raw", [b'{"model": 3}', b'{"model": ""}', b"[1]", b"{nope"])
def test_bad_bodies_are_400s(raw: bytes) -> None:
    with pytest.raises(APIError) as caught:
        read_request(raw, "application/json")
    assert caught.value.status_code == 400
