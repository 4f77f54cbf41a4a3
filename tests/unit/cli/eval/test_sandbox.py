"""Answer code runs in a limited child process: failures are reported, the harness goes on."""

from __future__ import annotations

import time

from services.cli.eval.capability import check_coding, extract_code
from services.cli.eval.sandbox import run_function

CASES = [([0], 0), ([1], 1), ([10], 55)]
FIB = "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"


def test_correct_code_passes() -> None:
    result = run_function(FIB, "fibonacci", CASES)
    assert result.ok and result.passed == 3 and result.failure == ""


def test_wrong_code_fails_with_the_count() -> None:
    result = run_function("def fibonacci(n):\n    return n\n", "fibonacci", CASES)
    assert not result.ok and result.passed == 2 and result.total == 3


def test_an_infinite_loop_is_killed_and_reported() -> None:
    started = time.monotonic()
    result = run_function("def fibonacci(n):\n    while True:\n        pass\n", "fibonacci", CASES, timeout_s=1)
    assert not result.ok and result.failure == "timeout"
    assert time.monotonic() - started < 10


def test_an_infinite_loop_at_import_time_that_sleeps_is_killed_by_the_wall_clock() -> None:
    result = run_function("import time\nwhile True:\n    time.sleep(0.1)\n", "fibonacci", CASES, timeout_s=1)
    assert not result.ok and result.failure == "timeout"


def test_a_memory_bomb_is_stopped_and_reported() -> None:
    bomb = "def fibonacci(n):\n    x = [0]\n    while True:\n        x = x * 2\n"
    result = run_function(bomb, "fibonacci", CASES, timeout_s=5, memory_mb=128)
    assert not result.ok and result.failure == "memory"
    one_allocation = "def fibonacci(n):\n    return len(bytearray(8 * 1024 ** 3))\n"
    assert run_function(one_allocation, "fibonacci", CASES, memory_mb=128).failure == "memory"


def test_a_syntax_error_or_a_missing_function_is_a_failure_not_a_crash() -> None:
    assert run_function("def fibonacci(n)\n", "fibonacci", CASES).failure.startswith("SyntaxError")
    assert run_function("def fib(n):\n    return 0\n", "fibonacci", CASES).failure.startswith("KeyError")


def test_code_is_taken_from_a_fenced_block_or_from_the_first_def() -> None:
    assert extract_code("Here:\n```python\nx = 1\n```\nDone.") == "x = 1"
    assert extract_code("Sure. def f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("I cannot write code.") == ""
    assert check_coding("```python\n" + FIB + "```", timeout_s=5, memory_mb=256).ok
    assert check_coding("no code", timeout_s=5, memory_mb=256).failure == "no code in the answer"
