"""The perfops-load-target block: what its base URL may be."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from blocks import LoadTarget


def test_a_base_url_with_credentials_is_refused_without_echoing_them() -> None:
    """The base URL is the target's name in the load history, the artifacts and the
    `perfops.load.*` events: a password in it went to all three."""
    for url in ("https://bob:pw-secret@staging.example.com", "https://bob@staging.example.com"):
        with pytest.raises(ValidationError) as raised:
            LoadTarget(base_url=url)
        error = raised.value.errors()[0]
        assert "must not carry a user or password" in error["msg"]
        assert "pw-secret" not in error["msg"] and "auth_header" in error["msg"]
    assert LoadTarget(base_url="https://staging.example.com/").base_url == (
        "https://staging.example.com"
    )


def test_one_target_has_one_spelling() -> None:
    """The base URL keys the target's baselines and history: a re-spelled block lost them."""
    for url in (
        "https://Staging.Example.com:443/",
        "HTTPS://staging.example.com",
        "https://staging.example.com/",
    ):
        assert LoadTarget(base_url=url).base_url == "https://staging.example.com"
    assert LoadTarget(base_url="http://127.0.0.1:80/App/").base_url == "http://127.0.0.1/App"
    assert LoadTarget(base_url="http://[::1]:8080/").base_url == "http://[::1]:8080"
    with pytest.raises(ValidationError, match="invalid port"):
        LoadTarget(base_url="http://staging.example.com:99999")
