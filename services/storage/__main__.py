"""``python -m services.storage``: the adapter store service."""

from services.common.server import serve_main
from services.storage.server import build_server
from services.storage.settings import StorageSettings

if __name__ == "__main__":
    serve_main(StorageSettings, build_server)
