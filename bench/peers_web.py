"""The webhook side of `bench_peers.py`: `dashpipe run web` against the FastAPI + uvicorn +
aiokafka receiver of `bench/peers/web_fastapi.py`, under `bench_webhook`'s wrk load.

Both servers run on their own topic prefix for the whole side; each round loads the peer then
ours (warm-up, then the measured run), and each side's raw topic must gain at least the 2xx
answers wrk counted for it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bare import document
from bench_webhook import (
    CONNECTIONS,
    LUA,
    PIPELINE,
    SECRET,
    THREADS,
    Load,
    check,
    create_pipeline,
    measured,
    probe,
    wrk,
)
from harness import (
    Child,
    child,
    child_env,
    dashpipe_command,
    free_port,
    record,
    scratch_prefix,
    topic_counter,
    wait_http,
)
from peerlib import PEERS, PeerEnv, peer_child, why

from dashpipe.settings import Settings
from dashpipe.signatures import ORIGINAL_HEADER, sign_original
from dashpipe.topics import TopicNames

PEER = "fastapi"
PEER_PROGRAM = PEERS / "web_fastapi.py"


@dataclass
class Server:
    name: str
    url: str
    proc: Child
    count: Callable[[], Awaitable[int]]  # records on its raw topic now

    async def load(self, args: argparse.Namespace, script: Path) -> Load:
        await wrk(self.url, script, args.warmup)
        await asyncio.sleep(1.0)  # warm-up requests still in flight land before the count
        before = await self.count()
        done = await measured(self.url, script, args.seconds, [self.proc.pid])
        await asyncio.sleep(1.0)
        written = await self.count() - before
        check(self.name, done)
        if written < done.ok:
            raise RuntimeError(f"{self.name}: wrk counted {done.ok} 2xx answers but the raw "
                               f"topic gained only {written} records")
        self.proc.check_alive()
        return done


async def webhook(args: argparse.Namespace, settings: Settings, servers: str,
                  env: PeerEnv) -> list[float]:
    """The ratios ours / FastAPI, one per round (none when the peer is unavailable)."""
    body = document(1, 700)
    signature = sign_original(SECRET, body)
    headers = {"Content-Type": "application/json", ORIGINAL_HEADER: signature}
    token = secrets.token_hex(16)
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-web-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA.format(body=body.decode(), header=ORIGINAL_HEADER,
                                     signature=signature))
        async with scratch_prefix(servers, settings, "peers-web") as prefix, \
                scratch_prefix(servers, settings, "peers-fastapi") as peer_prefix, \
                topic_counter(servers, settings, TopicNames.from_prefix(prefix).raw) as count, \
                topic_counter(servers, settings,
                              TopicNames.from_prefix(peer_prefix).raw) as peer_count:
            port, peer_port = free_port(), free_port()
            base = f"http://127.0.0.1:{port}"
            ours_env = child_env(servers, prefix, DASHPIPE_WEB_PORT=str(port),
                                 DASHPIPE_ADMIN_TOKEN=token)
            with child("web", dashpipe_command("run", "web", "--log-level", args.log_level),
                       ours_env) as web:
                await wait_http(f"{base}/healthz", web)
                await create_pipeline(base, token)
                ours = Server("ours", f"{base}/webhooks/{PIPELINE}", web, count)
                await probe(ours.url, body, headers)
                reason = env.reason(PEER)
                if reason is not None:
                    print(f"peer {PEER}: unavailable ({reason})", flush=True)
                    await ours_only(args, script, ours)
                    return ratios
                peer_env = {"PEER_BROKERS": servers,
                            "PEER_OUT": TopicNames.from_prefix(peer_prefix).raw,
                            "PEER_SECRET": SECRET, "PEER_PORT": str(peer_port)}
                with peer_child(env, PEER, [str(PEER_PROGRAM)], peer_env) as proc:
                    peer_base = f"http://127.0.0.1:{peer_port}"
                    try:
                        await wait_http(f"{peer_base}/healthz", proc)
                        theirs = Server("FastAPI", f"{peer_base}/webhooks/{PIPELINE}", proc,
                                        peer_count)
                        await probe(theirs.url, body, headers)
                    except RuntimeError as exc:
                        print(f"peer {PEER}: unavailable ({why(exc)})",
                              flush=True)
                        await ours_only(args, script, ours)
                        return ratios
                    for round_ in range(1, args.rounds + 1):
                        try:
                            peer = await theirs.load(args, script)
                        except RuntimeError as exc:  # reported; ours is still measured
                            print(f"peer {PEER}: unavailable ({why(exc)})",
                                  flush=True)
                            await ours_only(args, script, ours)
                            return ratios
                        ratios.append(await one_round(args, script, ours, peer, env, round_))
    return ratios


async def ours_only(args: argparse.Namespace, script: Path, ours: Server) -> None:
    done = await ours.load(args, script)
    print(f"peers webhook: dashpipe {done.rate:,.0f} req/s ({done.cpu_us_per_request:.0f} CPU "
          "us per request); FastAPI unavailable", flush=True)


async def one_round(args: argparse.Namespace, script: Path, ours: Server, peer: Load,
                    env: PeerEnv, round_: int) -> float:
    """Ours after the peer's measured run; the ratio of the round."""
    done = await ours.load(args, script)
    version = env.versions.get("fastapi", "?")
    uvicorn = env.versions.get("uvicorn", "?")
    ratio = record(f"peers-webhook-{PEER}", unit="req/s", ours=round(done.rate),
                   baseline=round(peer.rate), peer=f"FastAPI {version} + uvicorn {uvicorn}",
                   seconds=args.seconds, connections=CONNECTIONS, threads=THREADS,
                   ours_cpu_us_per_req=round(done.cpu_us_per_request),
                   peer_cpu_us_per_req=round(peer.cpu_us_per_request),
                   ours_p99_ms=round(done.p99_ms, 2), peer_p99_ms=round(peer.p99_ms, 2),
                   round=round_, quick=args.quick)
    print(f"peers webhook round {round_} (wrk -t{THREADS} -c{CONNECTIONS}, {args.seconds} s): "
          f"dashpipe {done.rate:,.0f} req/s ({done.cpu_us_per_request:.0f} CPU us per "
          f"request); FastAPI {version} + uvicorn {uvicorn} + aiokafka {peer.rate:,.0f} req/s "
          f"({peer.cpu_us_per_request:.0f} CPU us per request), ratio {ratio:.2f}", flush=True)
    return ratio
