"""A user and password carried in a block's URL move to the block's own fields."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr


def credentials_out_of_url(data: Any, *, keep_username: bool = False) -> Any:
    """`data` (a block's fields, before validation) with the user and password of its `url`
    (`redis://:pw@cache/0`, `https://user:pw@prom:9090`) moved to `username` and the secret
    `password`: the URL is a plain field, shown in the UI, kept in the block document and named
    in errors and records. The URL's password was the one sent, so it wins over the field's;
    its user too, unless `keep_username` (a `username` given as a field then stays)."""
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return data
    parts = urlsplit(data["url"])
    if "@" not in parts.netloc:
        return data
    moved = dict(data)
    head, rest = data["url"].split("//", 1)  # the netloc follows the scheme's //
    moved["url"] = f"{head}//{rest.replace(parts.netloc, parts.netloc.rsplit('@', 1)[1], 1)}"
    if parts.username and not (keep_username and data.get("username")):
        moved["username"] = unquote(parts.username)
    if parts.password is not None:
        moved["password"] = SecretStr(unquote(parts.password))
    return moved
