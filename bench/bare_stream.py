"""The transport's floor for storage_bench: a bare gRPC server that takes and sends raw bytes, nothing else.

    python -m bare_stream   (from bench/, with CLAAS_PORT_FILE set; storage_bench starts it)

``/bench.Bare/Upload`` reads a stream of byte messages and answers their count; ``/bench.Bare/Download``
answers a stream of the size it is asked for, in chunks of the size storage sends. No protobuf, no disk, no
hashing: what is left is gRPC between two Python processes, with the options our services use.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc

from services.storage.layout import SEND_CHUNK_BYTES

#: The channel and server options of our services that shape a stream (services/common/{server,client}.py).
OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.http2.bdp_probe", 0),
]


async def _upload(requests, context) -> bytes:
    total = 0
    async for piece in requests:
        total += len(piece)
    return str(total).encode()


async def _download(request: bytes, context):
    size = int(request)
    piece = bytes(SEND_CHUNK_BYTES)
    for offset in range(0, size, SEND_CHUNK_BYTES):
        yield piece[: min(SEND_CHUNK_BYTES, size - offset)]


async def main() -> None:
    server = grpc.aio.server(options=OPTIONS)
    handlers = {
        "Upload": grpc.stream_unary_rpc_method_handler(_upload),
        "Download": grpc.unary_stream_rpc_method_handler(_download),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Bare", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(os.environ["CLAAS_PORT_FILE"]).write_text(str(port))
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
