"""`python deployments/create_blocks.py cdn` saves the perfops-cdn-target block from the
environment like the other systems' blocks: the token kept as a secret and never printed;
nothing saved while a variable is missing."""

from __future__ import annotations

import re
import runpy
import sys
import uuid

import pytest
from pydantic import SecretStr

from blocks.cdn import CLOUDFLARE_API, CdnTarget
from blocks.resolve import load_block
from perfops.errors import BlockNotFound
from tests.e2e.stack import ROOT

SCRIPT = str(ROOT / "deployments" / "create_blocks.py")
TOKEN = "cdn-token-" + uuid.uuid4().hex


def _create_blocks(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", [SCRIPT, *args])
    main = runpy.run_path(SCRIPT, run_name="create_blocks")["main"]
    return int(main())


@pytest.mark.usefixtures("prefect_harness")
def test_the_cdn_block_is_saved_from_the_environment_its_token_a_secret_never_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"perfops-cdn-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("PERFOPS_CDN_ZONE_ID", "023e105f4ecef8ad9ca31a8372d0c353")
    monkeypatch.delenv("PERFOPS_CDN_API_TOKEN", raising=False)
    assert _create_blocks(monkeypatch, "cdn", "--name", name) == 2
    assert "PERFOPS_CDN_API_TOKEN unset" in capsys.readouterr().err
    with pytest.raises(
        BlockNotFound, match=re.escape(f"no perfops-cdn-target block named {name!r}")
    ):
        load_block(CdnTarget, name)

    monkeypatch.setenv("PERFOPS_CDN_API_TOKEN", TOKEN)
    assert _create_blocks(monkeypatch, "cdn", "--name", name) == 0
    out = capsys.readouterr()
    assert f"saved CdnTarget block {name!r}: zone 023e105f" in out.out
    assert TOKEN not in out.out + out.err
    saved = load_block(CdnTarget, name)
    assert isinstance(saved.api_token, SecretStr)
    assert saved.api_token.get_secret_value() == TOKEN
    assert (saved.zone_id, saved.base_url) == ("023e105f4ecef8ad9ca31a8372d0c353", CLOUDFLARE_API)
    assert TOKEN not in repr(saved)

    defaults = runpy.run_path(SCRIPT, run_name="create_blocks")["DEFAULT_NAMES"]
    assert defaults["cdn"] == "perfops-cdn"
