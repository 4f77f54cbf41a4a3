"""``python -m services.trainer``: the trainer service (one per device)."""

from __future__ import annotations

import asyncio

from services.common.logs import configure_logging
from services.common.server import run_server
from services.common.settings import load_settings
from services.trainer.server import build_server
from services.trainer.settings import TrainerSettings


def main() -> None:
    settings = load_settings(TrainerSettings)
    configure_logging(settings.log_format, settings.log_level)
    server, ready, on_stop = build_server(settings)
    asyncio.run(run_server(server, ready=ready, on_stop=on_stop))


if __name__ == "__main__":
    main()
