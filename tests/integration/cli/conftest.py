"""The CLI tests' runner."""

from __future__ import annotations

import pytest

from tests.integration.cli.test_cli_pipelines import SECRETS
from tests.integration.conftest import Run


@pytest.fixture
def dashpipe(dashpipe_cli: Run) -> Run:
    """The CLI runner, checking that no secret is ever printed."""

    async def run(*argv: str) -> tuple[int, str, str]:
        code, out, err = await dashpipe_cli(*argv)
        for secret in SECRETS:
            assert secret not in out + err
        return code, out, err

    return run
