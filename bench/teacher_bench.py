"""Teacher throughput: scored response tokens per second, per backend and batch size.

    python bench/teacher_bench.py                      # hf backend only
    python bench/teacher_bench.py --vllm-url URL       # and the vllm backend against that server

Scores through the teacher's core (what the gRPC servicer calls), hindsight prompt included, top-K 20.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from services.common.domain import Message
from services.common.logs import configure_logging
from services.teacher.core import Teacher
from services.teacher.domain import ScoreItem, ScoreRequest
from services.teacher.server import build_teacher
from services.teacher.settings import TeacherSettings

CONVERSATION = (
    Message("system", "You are a helpful assistant."),
    Message("user", "Explain in a few sentences why the sky is blue."),
)
FEEDBACK = "Be more concise, and never use emojis."
ANSWER = (
    "The sky looks blue because of Rayleigh scattering. Sunlight holds every colour, and as it passes through "
    "the air, the short blue wavelengths are scattered by the gas molecules far more than the long red ones. "
    "That scattered blue light reaches our eyes from every part of the sky, so the whole sky appears blue. "
)


def response_ids(teacher: Teacher, tokens: int) -> tuple[int, ...]:
    tokenizer = teacher.tokenizer
    answer = tokenizer.encode(ANSWER * (1 + tokens // 60), add_special_tokens=False)
    return (*answer[: tokens - 1], tokenizer.eos_token_id)


async def bench(settings: TeacherSettings, batch_sizes: list[int], tokens: int, repeats: int, top_k: int) -> None:
    teacher, adapters = build_teacher(settings)
    await teacher.start()
    try:
        response = response_ids(teacher, tokens)
        for batch in batch_sizes:
            request = ScoreRequest(items=(ScoreItem(CONVERSATION, FEEDBACK, response),) * batch, top_k=top_k)
            await teacher.score(request)  # warm-up
            started = time.perf_counter()
            for _ in range(repeats):
                await teacher.score(request)
            elapsed = time.perf_counter() - started
            scored = batch * len(response) * repeats
            print(
                f"{settings.backend:>5}  batch {batch:>2}  {scored / elapsed:8.1f} tokens/s  "
                f"{elapsed / repeats * 1000:8.1f} ms/request  ({len(response)} response tokens per item)",
                flush=True,
            )
    finally:
        await teacher.close()
        await adapters.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--vllm-url", help="also measure the vllm backend against this server")
    parser.add_argument("--vllm-model", default=None, help="served model name (default: --base-model)")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    configure_logging("console", "warning")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    runs = [TeacherSettings(backend="hf", base_model=args.base_model, device=args.device, max_batch_size=max(sizes))]
    if args.vllm_url:
        runs.append(
            TeacherSettings(
                backend="vllm",
                base_model=args.base_model,
                vllm_url=args.vllm_url,
                vllm_model=args.vllm_model,
                vllm_max_logprobs=max(args.top_k, 20),
            )
        )
    for settings in runs:
        asyncio.run(bench(settings, sizes, args.response_tokens, args.repeats, args.top_k))


if __name__ == "__main__":
    main()
