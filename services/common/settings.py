"""Typed settings shared by every service, read from ``CLAAS_*`` environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal, Self, TypeVar

from pydantic import AfterValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CLAAS_"
#: How every example secret of the manifests starts (k8s/base/secrets): refused wherever others can connect.
EXAMPLE_SECRET_PREFIX = "change-me"


def beyond_loopback(host: str) -> bool:
    """Can another machine reach a server bound to ``host``?"""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it resolves to something others reach
        return True


def _a_grpc_target(value: str) -> str:
    from services.common.client import grpc_target  # the client side of gRPC, only where settings are checked
    from services.common.errors import InvalidArgument

    try:
        grpc_target(value)
    except InvalidArgument as exc:
        raise ValueError(exc.message) from None
    return value


#: An address setting of a service the caller reaches over gRPC: ``host:port``, a replica list
#: ``ip:port,ip:port`` or a target gRPC resolves (``dns:///name:port``); see ``services.common.client.grpc_target``.
ServiceAddress = Annotated[str, AfterValidator(_a_grpc_target)]


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "claas"


class CommonSettings(BaseSettings):
    """What every gRPC service needs. Service settings subclass this and add their own fields."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one (printed at start).")
    internal_token: str = Field(
        "",
        description="Bearer token services use between each other. Empty disables the check (local tests only).",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: readable on a terminal, JSON otherwise (containers)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    grace_period_s: float = Field(
        20.0, gt=0, le=600, description="On SIGTERM, how long in-flight calls may take to finish."
    )
    max_message_mb: int = Field(16, ge=1, le=256, description="Largest gRPC message accepted or sent, MiB.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 disables it.")
    port_file: Path | None = Field(
        None, description="If set, the bound gRPC port is written there once the service is SERVING."
    )

    def listening_hosts(self) -> list[str]:
        """Every address this service binds a server to."""
        return [self.host]

    def secrets(self) -> dict[str, str]:
        """The secrets this service uses, by field name (subclasses add theirs)."""
        return {"internal_token": self.internal_token}

    @model_validator(mode="after")
    def _no_example_secret_beyond_loopback(self) -> Self:
        # On loopback an empty token is the local stack's choice; once others can connect, an empty or example
        # secret would let anyone in who read the manifests.
        exposed = [host for host in self.listening_hosts() if beyond_loopback(host)]
        if not exposed:
            return self
        for field, value in self.secrets().items():
            if not value or value.startswith(EXAMPLE_SECRET_PREFIX):
                what = "empty" if not value else f"the example value ({EXAMPLE_SECRET_PREFIX}...)"
                raise ValueError(
                    f"{ENV_PREFIX}{field.upper()} is {what} while the service listens on {exposed[0]}: "
                    "give it a secret of your own (k8s/README.md, Secrets), or listen on 127.0.0.1 only"
                )
        return self


class StorageCaller(BaseSettings):
    """Where the storage service is, for every service that calls it (one variable, one meaning)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    storage_addr: ServiceAddress = Field(
        "127.0.0.1:50051",
        description="Storage: host:port, its replicas as ip:port,ip:port, or dns:///name:port (calls spread "
        "round robin over the replicas that are up).",
    )


class FeedbackLimits(BaseSettings):
    """How much one feedback may carry. The proxy refuses first (naming the user's fields) and the trainer
    checks what reaches it again; both read the same variables, so a feedback one accepts the other does too."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    max_feedback_chars: int = Field(2000, ge=1, le=100_000, description="Longest feedback text accepted.")
    max_feedback_completions: int = Field(
        32, ge=1, le=1024, description="Most completions one feedback (one training job) may carry."
    )


class SettingsError(SystemExit):
    """Start-up fails with a message naming the environment variable at fault."""


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build ``cls`` from the environment, turning validation errors into one clear message."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", ENV_PREFIX)
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            if not field:  # a check across fields: its message names the variables itself
                lines.append(err["msg"].removeprefix("Value error, "))
                continue
            env_name = f"{prefix}{field}".upper()
            lines.append(f"{env_name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
