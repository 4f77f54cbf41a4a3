"""``python -m services.teacher``: serve the Teacher gRPC service until SIGTERM."""

from services.common.server import serve_main
from services.teacher.server import build_server
from services.teacher.settings import TeacherSettings

if __name__ == "__main__":
    serve_main(TeacherSettings, build_server)
