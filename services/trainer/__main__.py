"""``python -m services.trainer``: the trainer service (one per device)."""

from services.common.server import serve_main
from services.trainer.server import build_server
from services.trainer.settings import TrainerSettings

if __name__ == "__main__":
    serve_main(TrainerSettings, build_server)
