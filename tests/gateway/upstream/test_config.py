"""The upstreams file (GATEWAY_CONFIG): what a bad one is refused with."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.upstream.config import load_upstreams_file

GOOD = 'upstreams: [{name: a, urls: ["http://vllm-a:8000/v1"], models: [{alias: qwen-fast}]}]'


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "upstreams.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_a_good_file_loads(tmp_path: Path) -> None:
    config = load_upstreams_file(write(tmp_path, GOOD))
    assert [(u.name, u.urls, [m.alias for m in u.models]) for u in config.upstreams] == [
        ("a", ["http://vllm-a:8000/v1"], ["qwen-fast"])
    ]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('upstreams: [{name: a, urls: ["vllm-a:8000/v1"]}]',
         "upstreams.0.urls: 'vllm-a:8000/v1' is not an http:// or https:// URL with a host"),
        ('upstreams: [{name: a, urls: ["htp://vllm-a/v1"]}]', "is not an http:// or https://"),
        ('upstreams: [{name: a, urls: ["http:///v1"]}]', "with a host"),
        ('upstreams: [{name: a, urls: ["http://x/v1"], models: [{alias: "two words"}]}]',
         "upstreams.0.models.0.alias: String should match pattern"),
        ('upstreams: [{name: a, urls: ["http://x/v1"], models: [{alias: "' + "m" * 129 + '"}]}]',
         "upstreams.0.models.0.alias: String should have at most 128 characters"),
        ('upstreams: [{name: a, urls: ["http://x/v1"], bogus: 1}]',
         "upstreams.0.bogus: Extra inputs are not permitted"),
        ("upstreams: 5", "upstreams: Input should be a valid list"),
        ('upstreams: [{name: a, urls: ["http://x/v1"], api_key: sk-0123456789abcdef, '
         "api_key_env: HOME}]", "upstreams.0: give api_key or api_key_env, not both"),
    ],
    ids=["no scheme", "not http", "no host", "alias with a space", "alias too long",
         "unknown key", "not a list", "two keys"],
)  # fmt: skip
def test_a_bad_entry_is_named_by_its_place(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ValueError, match=r"^GATEWAY_CONFIG ") as caught:
        load_upstreams_file(write(tmp_path, text))
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_message_never_quotes_a_key_written_in_the_file(tmp_path: Path) -> None:
    text = 'upstreams: [{name: a, urls: ["nope"], api_key: "sk-live-0123456789abcdef"}]'
    with pytest.raises(ValueError) as caught:
        load_upstreams_file(write(tmp_path, text))
    assert "sk-live" not in str(caught.value)


def test_a_key_variable_that_is_not_set_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, 'upstreams: [{name: cloud, urls: ["https://x/v1"], api_key_env: K}]')
    monkeypatch.delenv("K", raising=False)
    with pytest.raises(ValueError, match=r"upstream 'cloud' takes its key from \$K, which is not"):
        load_upstreams_file(path)
    monkeypatch.setenv("K", "")
    with pytest.raises(ValueError, match=r"\$K, which is not set \(or empty\)"):
        load_upstreams_file(path)
    monkeypatch.setenv("K", "sk-0123456789")
    assert load_upstreams_file(path).upstreams[0].key() == "sk-0123456789"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (b"\xff\xfe upstreams: []", "can't decode byte 0xff"),
        ("{{{{ not yaml", "while parsing a flow mapping"),
    ],
    ids=["not UTF-8", "not YAML"],
)
def test_a_file_that_is_not_yaml_text_is_one_line(
    tmp_path: Path, text: str | bytes, said: str
) -> None:
    with pytest.raises(ValueError, match=r"^GATEWAY_CONFIG ") as caught:
        load_upstreams_file(write(tmp_path, text))
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_a_directory_or_a_missing_file_is_named(tmp_path: Path) -> None:
    for path, said in ((tmp_path, "Is a directory"), (tmp_path / "no.yaml", "No such file")):
        with pytest.raises(ValueError, match=f"^GATEWAY_CONFIG {path}: .*{said}"):
            load_upstreams_file(path)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        # The first upstream (and its alias) was dropped without a word.
        ('upstreams: [{name: a, urls: ["http://x/v1"], models: [{alias: fast}]}]\n'
         'upstreams: [{name: b, urls: ["http://y/v1"]}]\n',
         "found the key 'upstreams' a second time in \"<unicode string>\", line 2, column 1"),
        ('upstreams:\n  - name: a\n    urls: ["http://x/v1"]\n    name: b\n',
         "found the key 'name' a second time in \"<unicode string>\", line 4, column 5"),
        ("context_windows: {smollm2: 2048, smollm2: 8192}", "found the key 'smollm2' a second"),
    ],
    ids=["two upstreams lists", "two names", "two context windows"],
)  # fmt: skip
def test_a_key_given_twice_is_named_by_its_place(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ValueError, match=r"^GATEWAY_CONFIG ") as caught:
        load_upstreams_file(write(tmp_path, text))
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    text = 'upstreams: [{<<: {name: a, urls: ["http://x/v1"]}, name: b}]\n'
    assert [u.name for u in load_upstreams_file(write(tmp_path, text)).upstreams] == ["b"]
