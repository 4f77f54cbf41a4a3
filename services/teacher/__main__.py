"""``python -m services.teacher``: serve the Teacher gRPC service until SIGTERM."""

from __future__ import annotations

import asyncio

from services.common.logs import configure_logging
from services.common.server import run_server
from services.common.settings import load_settings
from services.teacher.server import build_server
from services.teacher.settings import TeacherSettings


def main() -> None:
    settings = load_settings(TeacherSettings)
    configure_logging(settings.log_format, settings.log_level)
    server, ready, stop = build_server(settings)
    asyncio.run(run_server(server, ready=ready, on_stop=stop))


if __name__ == "__main__":
    main()
