"""The whole system on one machine: four services and a vLLM, each a separate process.

`claas up` and `claas demo` use this; so do the end-to-end tests. The proxy is not special here: like a
compose file, the launcher starts vLLM beside it and the proxy only talks to vLLM over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.files import write_atomically
from services.common.model import PACKAGED_MODEL, resolve_base_model
from services.common.processes import alive, ending_with_parent
from services.common.settings import default_data_dir
from services.common.vllm_server import VllmOptions

#: Order of start; stop goes the other way round.
ROLES = ("storage", "teacher", "trainer", "vllm", "proxy")
STACK_FILE = "stack.json"
#: The local stack's API keys file (the proxy's CLAAS_API_KEYS_FILE), under its data dir.
KEYS_FILE = "api_keys.json"
DEFAULT_TENANT = "default"
MAX_RESTARTS = 5


@dataclass(frozen=True)
class StackConfig:
    """Where everything of a local stack lives, and on which ports."""

    data_dir: Path = field(default_factory=lambda: default_data_dir() / "stack")
    host: str = "127.0.0.1"
    port_base: int = 50050
    http_port: int = 8000
    vllm_port: int = 8001
    base_model: str = PACKAGED_MODEL
    served_name: str = PACKAGED_MODEL
    #: A folder (the embedded default, under data_dir) or s3://bucket[/prefix] (credentials from CLAAS_S3_*).
    store_url: str = ""
    device: str = "cpu"

    @property
    def addresses(self) -> dict[str, str]:
        h, b = self.host, self.port_base
        return {"proxy": f"{h}:{b}", "storage": f"{h}:{b + 1}", "teacher": f"{h}:{b + 2}", "trainer": f"{h}:{b + 3}"}

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def vllm_url(self) -> str:
        return f"http://{self.host}:{self.vllm_port}"

    @property
    def store(self) -> str:
        return self.store_url or str(self.data_dir / "store")

    def log_path(self, role: str) -> Path:
        return self.data_dir / "logs" / f"{role}.log"


@dataclass
class Secrets:
    """The local stack's internal token, its first API key (tenant ``default``) and vLLM's API key."""

    internal_token: str
    api_key: str
    vllm_api_key: str


def _load_or_create_secrets(config: StackConfig) -> Secrets:
    """The stack's secrets, kept under the data dir (mode 0600); made on first use, each one that is missing."""
    from services.proxy.keys import add_api_key

    path = config.data_dir / "secrets.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if {"internal_token", "api_key", "vllm_api_key"} <= data.keys():
        return Secrets(data["internal_token"], data["api_key"], data["vllm_api_key"])
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if "api_key" not in data:
        data["api_key"] = add_api_key(config.data_dir / KEYS_FILE, DEFAULT_TENANT)
    data.setdefault("internal_token", secrets.token_urlsafe(32))
    # A data dir from before vLLM had a key gains one; the tokens already handed out stay as they are.
    data.setdefault("vllm_api_key", secrets.token_urlsafe(32))
    write_atomically(path, json.dumps(data))
    return Secrets(data["internal_token"], data["api_key"], data["vllm_api_key"])


def _service_env(config: StackConfig, role: str, stack_secrets: Secrets) -> dict[str, str]:
    addresses = config.addresses
    env = {
        "CLAAS_HOST": config.host,
        "CLAAS_PORT": addresses[role].rsplit(":", 1)[1],
        "CLAAS_INTERNAL_TOKEN": stack_secrets.internal_token,
        "CLAAS_LOG_FORMAT": "json",
        "CLAAS_BASE_MODEL": config.base_model,
        "CLAAS_DEVICE": config.device,
        "CLAAS_STORAGE_ADDR": addresses["storage"],
        "CLAAS_TEACHER_ADDR": addresses["teacher"],
        "CLAAS_TRAINER_ADDR": addresses["trainer"],
        "CLAAS_VLLM_URL": config.vllm_url,
        "CLAAS_STORE_URL": config.store,
    }
    if role in ("teacher", "proxy"):  # the callers of vLLM (the teacher only with its vllm backend)
        env["CLAAS_VLLM_API_KEY"] = stack_secrets.vllm_api_key
    if role == "teacher":
        env["CLAAS_ADAPTER_DIR"] = str(config.data_dir / "teacher-adapters")
    if role == "proxy":
        env["CLAAS_HTTP_HOST"] = config.host
        env["CLAAS_HTTP_PORT"] = str(config.http_port)
        env["CLAAS_API_KEYS_FILE"] = str(config.data_dir / KEYS_FILE)
        env["CLAAS_ADAPTER_DIR"] = str(config.data_dir / "vllm-adapters")
        env["CLAAS_BASE_MODEL"] = config.served_name  # the proxy names the base model as vLLM serves it
    return env


class Stack:
    """Starts the processes in order, waits for each to be healthy, stops them in reverse order."""

    def __init__(self, config: StackConfig, *, on_event: Callable[[str, str], None] | None = None) -> None:
        self.config = config
        self.processes: dict[str, subprocess.Popen] = {}
        self._on_event = on_event or (lambda role, what: None)
        self.secrets: Secrets | None = None
        self._restarts: dict[str, int] = {}

    def _spawn(self, role: str, argv: list[str], env: dict[str, str]) -> None:
        log_path = self.config.log_path(role)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            self.processes[role] = subprocess.Popen(
                ending_with_parent(argv),
                env={**os.environ, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._on_event(role, "started")

    def start_role(self, role: str, extra_env: dict[str, str] | None = None) -> None:
        """Start one role (also used to restart a role that was stopped), optionally with more settings."""
        assert self.secrets is not None
        if role == "vllm":
            options = self._vllm_options()
            self._spawn(role, options.command(), {**options.environment(), **(extra_env or {})})
        else:
            env = _service_env(self.config, role, self.secrets)
            self._spawn(role, [sys.executable, "-m", f"services.{role}"], {**env, **(extra_env or {})})

    def _vllm_options(self) -> VllmOptions:
        assert self.secrets is not None
        return VllmOptions(
            model=resolve_base_model(self.config.base_model),
            served_name=self.config.served_name,
            host=self.config.host,
            port=self.config.vllm_port,
            api_key=self.secrets.vllm_api_key,
        )

    def up(self, timeout_s: float = 600.0) -> None:
        """Start everything; return once every health check says SERVING."""
        self._check_ports_free()
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.secrets = _load_or_create_secrets(self.config)
        resolve_base_model(self.config.base_model)  # prepare the packaged model once, before four processes need it
        self.start_role("vllm")  # the slowest to come up; the services start meanwhile
        for role in ("storage", "teacher", "trainer"):
            self.start_role(role)
            self.wait_healthy(role, timeout_s)
        self.wait_healthy("vllm", timeout_s)
        self.start_role("proxy")
        self.wait_healthy("proxy", timeout_s)
        self._write_stack_file()

    def _check_ports_free(self) -> None:
        """Refuse to start over another process: its health checks would pass for ours."""
        ports = {role: int(addr.rsplit(":", 1)[1]) for role, addr in self.config.addresses.items()}
        ports |= {"proxy (HTTP)": self.config.http_port, "vllm": self.config.vllm_port}
        for role, port in ports.items():
            if not port_is_free(self.config.host, port):
                raise StackError(
                    role,
                    f"cannot start: port {port} is already in use (another stack? pick other ports with "
                    "--port-base/--http-port/--vllm-port)",
                    self.config.log_path(role),
                )

    def wait_healthy(self, role: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        process = self.processes[role]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(role, f"exited with code {process.returncode}", self.config.log_path(role))
            if self._healthy(role):
                self._on_event(role, "healthy")
                return
            time.sleep(0.5)
        raise StackError(role, f"not healthy after {timeout_s:.0f}s", self.config.log_path(role))

    def _healthy(self, role: str) -> bool:
        if role == "vllm":
            try:
                return httpx.get(f"{self.config.vllm_url}/health", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False
        return grpc_health(self.config.addresses[role]) == "SERVING"

    def stop_role(self, role: str, *, kill: bool = False, grace_s: float = 30.0) -> None:
        process = self.processes.pop(role, None)
        if process is None or process.poll() is not None:
            return
        sig = signal.SIGKILL if kill else signal.SIGTERM
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
        self._on_event(role, "killed" if kill else "stopped")

    def restart_exited(self) -> list[str]:
        """Start again every role whose process ended on its own (like a compose `restart: on-failure`)."""
        restarted = []
        for role, process in list(self.processes.items()):
            if process.poll() is None:
                continue
            self._restarts[role] = self._restarts.get(role, 0) + 1
            if self._restarts[role] > MAX_RESTARTS:
                raise StackError(role, f"exited {MAX_RESTARTS + 1} times", self.config.log_path(role))
            self._on_event(role, f"exited with code {process.returncode}; restarting")
            self.start_role(role)
            restarted.append(role)
        if restarted:
            self._write_stack_file()
        return restarted

    def down(self) -> None:
        for role in reversed(ROLES):
            self.stop_role(role)
        (self.config.data_dir / STACK_FILE).unlink(missing_ok=True)

    def _write_stack_file(self) -> None:
        assert self.secrets is not None
        info = {
            "addresses": self.config.addresses,
            "http_url": self.config.http_url,
            "vllm_url": self.config.vllm_url,
            "api_key": self.secrets.api_key,
            "tenant": DEFAULT_TENANT,
            "base_model": self.config.served_name,
            "base_model_path": self.config.base_model,
            "pids": {role: p.pid for role, p in self.processes.items()},
            "logs": str(self.config.data_dir / "logs"),
        }
        path = self.config.data_dir / STACK_FILE
        write_atomically(path, json.dumps(info, indent=2))


class StackError(RuntimeError):
    """A process failed to start: names it and shows the tail of its log."""

    def __init__(self, role: str, what: str, log_path: Path) -> None:
        tail = log_tail(log_path)
        super().__init__(f"{role} {what}; last lines of {log_path}:\n{tail}")
        self.role = role


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def grpc_health(address: str, timeout_s: float = 2.0) -> str:
    """SERVING, NOT_SERVING, or DOWN when nothing answers."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return "DOWN"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def read_stack_file(data_dir: Path) -> dict:
    """The running local stack's file; ``FileNotFoundError`` if there is none, or if the one there is left
    from a launcher that was killed (its processes are gone): a stale file is removed, not trusted."""
    path = data_dir / STACK_FILE
    if not path.exists():
        raise FileNotFoundError(f"no running stack under {data_dir} (start one with `claas up`)")
    info = json.loads(path.read_text())
    if not any(alive(pid) for pid in info.get("pids", {}).values()):
        path.unlink(missing_ok=True)
        raise FileNotFoundError(f"the stack under {data_dir} is no longer running (start one with `claas up`)")
    return info


def stack_running(data_dir: Path) -> bool:
    """Is a local stack running under ``data_dir``?"""
    try:
        read_stack_file(data_dir)
    except FileNotFoundError:
        return False
    return True


@dataclass
class ServiceProcess:
    """One service process of a scripted fleet (the scale and routing checks): how to start it again, the
    running one, its health (gRPC, or vLLM's /health) and signals to its process group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    health: str  # a gRPC address, or an http URL whose /health answers 200
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                ending_with_parent(self.argv),
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def healthy(self) -> bool:
        if self.health.startswith("http"):
            try:
                return httpx.get(f"{self.health}/health", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False
        return grpc_health(self.health) == "SERVING"

    async def wait_healthy(self, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{log_tail(self.log)}")
            if await asyncio.to_thread(self.healthy):
                return
            await asyncio.sleep(0.5)  # polling a health check
        raise RuntimeError(f"{self.name} not healthy after {timeout_s:.0f}s:\n{log_tail(self.log)}")

    def signal(self, sig: signal.Signals) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=120)
