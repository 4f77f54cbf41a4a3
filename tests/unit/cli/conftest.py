"""The CLI's commands run against the whole proxy in process (the fixtures of the proxy's tests)."""

from tests.unit.proxy.conftest import (  # noqa: F401  (fixtures)
    keys,
    keys_file,
    proxy,
    settings,
    storage,
    storage_addr,
    storage_folder,
    trainer,
    vllm,
)
