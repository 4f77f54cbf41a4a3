"""``python -m services.proxy``: the public door (gRPC and OpenAI-compatible HTTP)."""

from services.common.server import serve_main
from services.proxy.server import build_server
from services.proxy.settings import ProxySettings

if __name__ == "__main__":
    serve_main(ProxySettings, build_server)
