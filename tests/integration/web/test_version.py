"""`GET /version` on the web role: what runs, without auth."""

import platform
from typing import Any

import aiohttp
import aiokafka

import dashpipe


async def test_version_names_dashpipe_python_and_the_kafka_client(start_roles: Any) -> None:
    rt = await start_roles("web")
    async with aiohttp.ClientSession(rt.web_url) as client, client.get("/version") as r:
        assert r.status == 200  # no Authorization header: public, as /healthz
        assert await r.json() == {"version": dashpipe.__version__,
                                  "python": platform.python_version(),
                                  "kafka_client": aiokafka.__version__}
