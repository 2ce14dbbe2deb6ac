"""A JetStream cluster on loopback, from the program's own NATS configs (one server per
active pod of a deployment: the dev stack's three by default).

Why: the backup code is a nats-py client that runs in the test process itself (asyncio), so
the servers must be reachable from the root namespace. Each server runs the dev stack's
rendered config (`render/nats.py`: server name `service-nats-<code>`, territory tags,
users of the global and the system account, `sync_interval: always`, ping settings, cluster
name and route credentials) with only the network bits rebound: every listener on 127.0.0.1
and a free port, routes (to the deployment's peers, as rendered) and advertise addresses
pointing there instead of the Docker names. The streams come from the program's stream
definitions, created by the program's own stream job code.

    with JetStreamBed(workdir) as bed:
        nc = await nats.connect(bed.url("dk"), user=bed.user, password=bed.password)

A deployment can change under a running bed, as `pulumi up` changes it: `use_deployment`
renders every active pod's config again (a new pod gets ports and a directory), `reload`
sends SIGHUP, `start_server` starts a new one, `forget` drops a stopped (retired) one.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import nats
from nats.aio.client import Client

from tests.support.deployments import dev_deployment
from unityplan_infra.nats.apply_streams import ensure_streams
from unityplan_infra.nats.streams import stream_configs
from unityplan_infra.render.nats import CLIENT_USER, SYSTEM_USER, nats_config
from unityplan_infra.topology.plan import Deployment

LOOPBACK = "127.0.0.1"
STOP_GRACE = 5.0
RELOADED = "Reloaded server configuration"  # nats-server's log line after a good SIGHUP


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (held open together, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class BedServer:
    code: str
    name: str  # server_name as the program renders it
    client_port: int
    cluster_port: int
    monitor_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.client_port}"

    @property
    def store_dir(self) -> Path:
        return self.directory / "jetstream"

    @property
    def config_file(self) -> Path:
        return self.directory / "nats.json"

    @property
    def log_file(self) -> Path:
        return self.directory / "nats.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class JetStreamBed:
    """The dev stack's NATS servers on loopback; see the module doc."""

    def __init__(
        self,
        workdir: Path,
        deployment: Deployment | None = None,
        *,
        system_account: bool = True,
        binary: str | Path | None = None,
    ) -> None:
        """`system_account`: the config as rendered, with the system account's user; False
        leaves that account out (the config as it was before the program retired servers).
        `binary`: the nats-server every server runs (default: the one on PATH, the venv's)."""
        self.workdir = workdir
        self.deployment = deployment or dev_deployment()
        self.user = CLIENT_USER
        self.password = f"client-{uuid.uuid4().hex}"
        self.route_password = f"route-{uuid.uuid4().hex}"
        self.system_user = SYSTEM_USER
        self.system_password = f"system-{uuid.uuid4().hex}"
        self.system_account = system_account
        self.binary = str(binary or shutil.which("nats-server") or "nats-server")
        self.servers: dict[str, BedServer] = {}
        self._add_servers()
        for pod in self.deployment.pods:
            self._write_config(pod.code)

    def _add_servers(self) -> list[str]:
        """A BedServer (free ports, a directory) for each active pod that has none yet."""
        new = [pod for pod in self.deployment.pods if pod.code not in self.servers]
        ports = free_ports(3 * len(new))
        for index, pod in enumerate(new):
            client, cluster, monitor = ports[3 * index : 3 * index + 3]
            directory = self.workdir / f"nats-{pod.code}"
            directory.mkdir(parents=True, exist_ok=True)
            self.servers[pod.code] = BedServer(
                pod.code, pod.nats_server_name, client, cluster, monitor, directory
            )
        return [pod.code for pod in new]

    def use_deployment(self, deployment: Deployment) -> list[str]:
        """Render every active pod's config from `deployment` (routes to its peers only);
        new pods get a server (not started). Returns the new pods' codes. Running servers
        read their new config on `reload`. A retired pod's server keeps its old config
        until `forget`."""
        self.deployment = deployment
        added = self._add_servers()
        for pod in deployment.pods:
            self._write_config(pod.code)
        return added

    def reload(self, code: str, timeout: float = 10.0) -> None:
        """SIGHUP, and wait for the server to log that it reloaded its config."""
        server = self.servers[code]
        if server.process is None or not server.running():
            raise RuntimeError(f"nats-server {code} is not running")
        before = self.log_text(code).count(RELOADED)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log_text(code).count(RELOADED) <= before:
            if time.monotonic() > deadline or not server.running():
                raise RuntimeError(f"{code} did not reload:\n{self.log_text(code)[-3000:]}")
            time.sleep(0.05)

    def forget(self, code: str) -> None:
        """Drop a (stopped) server from the bed, as the program forgets a retired pod."""
        self.stop_server(code)
        del self.servers[code]

    def log_text(self, code: str) -> str:
        log = self.servers[code].log_file
        return log.read_text(errors="replace") if log.exists() else ""

    # --- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self._start_fresh_cluster()
            self.apply_program_streams()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for code in self.servers:
            self.stop_server(code)

    def _start_fresh_cluster(self, attempts: int = 2) -> None:
        """Start every server on an empty store until the meta group forms.

        Why a second attempt: on 2.10.25, three servers started within milliseconds of each
        other have, in two fresh-clone CI runs on 2 cores (each starting beds dozens of
        times), elected a meta leader within 6 s and then not shown one leader and a full,
        current meta group on every server for 30 s. The cause is not known; it is the bed's bootstrap, before anything under
        test runs, so the bed starts over from empty stores once, and says so.
        """
        for attempt in range(1, attempts + 1):
            for code in self.servers:
                self.start_server(code)
            try:
                self.wait_formed(timeout=30)
                return
            except TimeoutError as error:
                if attempt == attempts:
                    raise
                print(f"JetStreamBed: {error.args[0].splitlines()[0]}; {self.meta_views()};"
                      " starting again on empty stores")  # fmt: skip
                for code in self.servers:
                    self.stop_server(code)
                    self.wipe_store(code)

    def meta_views(self) -> dict[str, Any]:
        """Each server's view of the meta group (leader, size, peers), for error messages."""
        views: dict[str, Any] = {}
        for code in self.servers:
            try:
                meta = self.monitor(code, "jsz").get("meta_cluster", {})
            except OSError as error:
                views[code] = f"no answer: {error}"
                continue
            views[code] = {"leader": meta.get("leader"), "size": meta.get("cluster_size"),
                           "peers": [(peer.get("name"), peer.get("current"), peer.get("offline"))
                                     for peer in meta.get("replicas") or []]}  # fmt: skip
        return views

    def _write_config(self, code: str) -> None:
        server = self.servers[code]
        pod = self.deployment.pod(code)
        config: dict[str, Any] = nats_config(
            self.deployment, pod, route_password=self.route_password,
            client_password=self.password, system_password=self.system_password,
            store_dir=str(server.store_dir),
        )  # fmt: skip
        if not self.system_account:
            del config["accounts"]
        # The only changes: loopback listeners on free ports instead of Docker names.
        config["host"] = LOOPBACK
        config["port"] = server.client_port
        config["http"] = f"{LOOPBACK}:{server.monitor_port}"
        config.pop("http_port", None)
        config["client_advertise"] = f"{LOOPBACK}:{server.client_port}"
        cluster = config["cluster"]
        cluster["host"] = LOOPBACK
        cluster["port"] = server.cluster_port
        cluster["advertise"] = f"{LOOPBACK}:{server.cluster_port}"
        user = cluster["authorization"]["user"]
        peers = self.deployment.peers(pod)
        if len(cluster["routes"]) != len(peers):
            raise AssertionError(f"{code}: routes {cluster['routes']} are not one per peer")
        cluster["routes"] = [
            f"nats://{user}:{self.route_password}@{LOOPBACK}:{self.servers[peer.code].cluster_port}"
            for peer in peers
        ]
        # Written whole, then renamed: a reload never reads half a file.
        staged = server.config_file.with_suffix(".tmp")
        staged.write_text(json.dumps(config, indent=2))
        staged.replace(server.config_file)

    def start_server(self, code: str) -> None:
        server = self.servers[code]
        if server.running():
            return
        log = server.log_file.open("ab")
        try:
            server.process = subprocess.Popen(
                [self.binary, "-c", str(server.config_file)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    def stop_server(self, code: str) -> None:
        """SIGTERM (clean shutdown: the peers learn it went offline), SIGKILL after a grace."""
        process = self.servers[code].process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_GRACE)

    def wipe_store(self, code: str) -> None:
        """Lose the server's whole JetStream store, as with a lost data volume."""
        if self.servers[code].running():
            raise RuntimeError(f"stop {code} before wiping its store")
        shutil.rmtree(self.servers[code].store_dir, ignore_errors=True)

    # --- observation ---------------------------------------------------------------------
    def url(self, code: str) -> str:
        return self.servers[code].url

    def server_name(self, code: str) -> str:
        return self.servers[code].name

    def monitor(self, code: str, path: str) -> dict[str, Any]:
        url = f"http://{LOOPBACK}:{self.servers[code].monitor_port}/{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    def version(self, code: str) -> str:
        """The release the server runs, from its /varz: '2.10.25'."""
        return str(self.monitor(code, "varz")["version"])

    def logs(self) -> str:
        return "\n".join(
            f"=== {code}\n{server.log_file.read_text(errors='replace')[-4000:]}"
            for code, server in self.servers.items()
            if server.log_file.exists()
        )

    def formed(self) -> bool:
        """Every server is up and sees the same meta leader and a meta group of all servers;
        the leader (the only one that lists them) sees every other member current."""
        metas: dict[str, dict[str, Any]] = {}
        for code in self.servers:
            try:
                metas[self.servers[code].name] = self.monitor(code, "jsz").get("meta_cluster", {})
            except OSError:
                return False
        leaders = {meta.get("leader") for meta in metas.values()}
        sizes = {meta.get("cluster_size") for meta in metas.values()}
        if len(leaders) != 1 or sizes != {len(self.servers)}:
            return False
        leader = metas.get(str(next(iter(leaders))))
        if leader is None:
            return False
        replicas = leader.get("replicas") or []
        return len(replicas) == len(self.servers) - 1 and all(
            peer.get("current") and not peer.get("offline") for peer in replicas
        )

    def wait_formed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.formed():
            for code, server in self.servers.items():
                if server.process is not None and server.process.poll() is not None:
                    raise RuntimeError(f"nats-server {code} exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not formed in {timeout}s: {self.meta_views()}\n"
                                   f"{self.logs()}")  # fmt: skip
            time.sleep(0.1)

    # --- streams -------------------------------------------------------------------------
    async def connect(self, code: str, *, system: bool = False) -> Client:
        """A client of `code`'s server: the client user, or (`system`) the system user."""
        user, password = (self.system_user, self.system_password) if system else (
            self.user, self.password)  # fmt: skip
        # Bounded: nats-py retries a refused connect forever with max_reconnect_attempts=0.
        connecting = nats.connect(
            self.url(code), user=user, password=password, connect_timeout=3,
            allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0,
        )  # fmt: skip
        return await asyncio.wait_for(connecting, 10)

    def apply_program_streams(self, deadline: float = 30.0) -> dict[str, str]:
        """GLOBAL_EVENTS (R3) and TERRITORY_<CODE> (R1, pinned) through the stream job's code."""

        async def apply() -> dict[str, str]:
            nc = await self.connect(next(iter(self.servers)))
            try:
                return await ensure_streams(nc, stream_configs(self.deployment), deadline)
            finally:
                await nc.close()

        return asyncio.run(apply())
