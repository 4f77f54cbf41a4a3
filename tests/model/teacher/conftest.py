"""The hf teacher on the packaged model, a reference copy of the model for plain forward passes, and a
LoRA adapter served by a stand-in for storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.teacher.adapters import AdapterFiles
from services.teacher.core import Teacher
from services.teacher.hf_backend import HfBackend
from services.teacher.settings import TeacherSettings
from tests.model.teacher.lora import make_test_lora, storage_serving
from tests.unit.teacher.fakes import FakeStorage

#: Head version the stand-in storage reports for the test adapter.
ADAPTER_HEAD = 3


@pytest.fixture(scope="module")
def reference(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(tokenizer, PEFT model, adapter folder): a second copy of the model carrying the test LoRA."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("lora")
    model = make_test_lora(model_dir, folder)
    return AutoTokenizer.from_pretrained(model_dir), model, folder


@pytest.fixture(scope="module")
def storage(reference) -> FakeStorage:
    return storage_serving(reference[2], ADAPTER_HEAD)


@pytest.fixture(scope="module")
async def hf_teacher(model_dir: Path, storage: FakeStorage):
    """The served core and hf backend, with the stand-in storage behind the adapter modes."""
    adapters = AdapterFiles(lambda: storage)
    settings = TeacherSettings(base_model=str(model_dir), backend="hf", max_batch_size=4)
    teacher = Teacher(HfBackend(settings, adapters), adapters=adapters)
    await teacher.start()
    yield teacher
    await teacher.close()
