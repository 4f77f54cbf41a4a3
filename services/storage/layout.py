"""Names, limits and object keys of the adapter store (DESIGN.md §4).

```
adapters/<tenant>/<adapter>/adapter.json                  the record: head, tags, last version, pending write
adapters/<tenant>/<adapter>/versions/<n>/<file>           the version's files (PEFT layout + optimizer state)
adapters/<tenant>/<adapter>/versions/<n>/manifest.json    sizes, SHA-256, parent, lineage; written last
generations/<tenant>/<adapter>                            how many adapters of this name were ever created
```

The generation counter lives outside the adapter's folder: a delete leaves it, so the next adapter of the name
counts on from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

from services.common.domain import OPTIMIZER_FILE
from services.common.errors import InvalidArgument
from services.common.naming import NAME_PART, NAME_PART_RULE

#: Largest chunk of a file in one stream message that storage accepts (well under the gRPC message limit).
CHUNK_BYTES = 1 << 20
#: Chunk of a file as our senders cut it, either way: each one in flight is copied a few times on its way
#: (protobuf, gRPC), so with many transfers at once smaller chunks keep memory low; 80 messages for 20 MB.
SEND_CHUNK_BYTES = 256 << 10
#: Most files one version may hold.
MAX_FILES = 64
#: Private files: returned only when the trainer asks for them, never exported.
PRIVATE_FILES = frozenset({OPTIMIZER_FILE})
RECORD_FILE = "adapter.json"
MANIFEST_FILE = "manifest.json"
ROOT = "adapters/"

#: Longest base model name, job id or lineage value kept in a record or manifest.
MAX_TEXT = 256
#: Largest lineage of one version as JSON (samples' texts): every listing of the version carries it.
MAX_LINEAGE_BYTES = 1 << 20
#: Most tags of one adapter (each keeps its version from retention).
MAX_TAGS = 32
#: Most target modules of a LoRA shape.
MAX_TARGET_MODULES = 256

#: A file name of a version, and a module name of a LoRA shape: plain names, no path.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[a-z0-9._/-]{0,128}")
_NAME_RULE = f"'tenant/adapter', each part {NAME_PART_RULE}"


def chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(offset, piece)`` of ``data`` in pieces of at most ``SEND_CHUNK_BYTES``, as streams carry them."""
    for offset in range(0, len(data), SEND_CHUNK_BYTES):
        yield offset, data[offset : offset + SEND_CHUNK_BYTES]


def check_name(name: str) -> str:
    """An adapter name ``tenant/adapter``; raises InvalidArgument otherwise."""
    parts = name.split("/")
    if len(parts) != 2 or not all(NAME_PART.fullmatch(p) and ".." not in p for p in parts):
        raise InvalidArgument(f"invalid adapter name {name!r}: expected {_NAME_RULE}", param="name")
    return name


def check_text(value: str, field: str, *, required: bool = False) -> str:
    """A short printable text (a model name, a job id): at most ``MAX_TEXT`` characters, no control ones."""
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required", param=field)
    if len(value) > MAX_TEXT or not value.isprintable():
        raise InvalidArgument(
            f"{field} must be at most {MAX_TEXT} printable characters, got {len(value)}: {value[:40]!r}", param=field
        )
    return value


def check_target_modules(modules: tuple[str, ...]) -> tuple[str, ...]:
    if len(modules) > MAX_TARGET_MODULES:
        raise InvalidArgument(
            f"lora.target_modules holds {len(modules)} names, at most {MAX_TARGET_MODULES}", param="lora.target_modules"
        )
    for module in modules:
        if not _PLAIN_NAME.fullmatch(module):
            raise InvalidArgument(
                f"invalid module name {module[:40]!r} in lora.target_modules: 1-128 of A-Z a-z 0-9 . _ -",
                param="lora.target_modules",
            )
    return modules


def check_tag(tag: str) -> str:
    if not NAME_PART.fullmatch(tag):
        raise InvalidArgument(f"invalid tag {tag!r}: {NAME_PART_RULE}")
    return tag


def check_prefix(prefix: str) -> str:
    """A name prefix for listing and watching, e.g. ``tenant/`` or ``""`` for everything."""
    if not _PREFIX.fullmatch(prefix) or ".." in prefix or prefix.startswith("/") or "//" in prefix:
        raise InvalidArgument(f"invalid adapter name prefix {prefix!r}", param="prefix")
    return prefix


def check_file_name(path: str) -> str:
    """A file of a version: a plain name (no folders), never the manifest itself."""
    # Compared without case: "Manifest.json" would be the manifest itself on a case-insensitive disk.
    if not _PLAIN_NAME.fullmatch(path) or ".." in path or path.lower() == MANIFEST_FILE:
        raise InvalidArgument(f"invalid file path {path!r}: a plain file name of A-Z a-z 0-9 . _ -")
    return path


def check_sha256(path: str, digest: str) -> str:
    if not _SHA256.fullmatch(digest):
        raise InvalidArgument(f"file {path!r}: sha256 must be 64 lower-case hex digits, got {digest!r}")
    return digest


def adapter_prefix(name: str) -> str:
    return f"{ROOT}{name}/"


def record_key(name: str) -> str:
    return f"{ROOT}{name}/{RECORD_FILE}"


def generation_key(name: str) -> str:
    return f"generations/{name}"


def versions_prefix(name: str) -> str:
    return f"{ROOT}{name}/versions/"


def version_prefix(name: str, version: int) -> str:
    return f"{ROOT}{name}/versions/{version}/"


def file_key(name: str, version: int, path: str) -> str:
    return f"{ROOT}{name}/versions/{version}/{path}"


def manifest_key(name: str, version: int) -> str:
    return file_key(name, version, MANIFEST_FILE)


class KeyInfo(NamedTuple):
    """An object key under ``adapters/`` taken apart."""

    name: str
    #: The version folder the object is in; None for objects beside the record.
    version: int | None
    #: File name inside the version folder, or the path below the adapter's folder.
    file: str


def parse_key(key: str) -> KeyInfo | None:
    """The parts of a key of an adapter's folder; None for keys outside any adapter's folder."""
    parts = key.removeprefix(ROOT).split("/")
    if not key.startswith(ROOT) or len(parts) < 3:
        return None
    name = f"{parts[0]}/{parts[1]}"
    if len(parts) == 5 and parts[2] == "versions" and parts[3].isdigit():
        return KeyInfo(name, int(parts[3]), parts[4])
    return KeyInfo(name, None, "/".join(parts[2:]))
