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
