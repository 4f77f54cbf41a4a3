"""Trainer protos <-> trainer types: config overrides both ways, samples and job views round trip."""

from __future__ import annotations

import pytest
from claas.v1 import common_pb2

from services.common.domain import Message, StepMetrics
from services.common.errors import ClaasError, InvalidArgument
from services.trainer import convert
from services.trainer.config import SdpoConfig
from services.trainer.domain import JobState, JobView, Sample

SAMPLE = Sample("c", (Message("user", "hi"),), (1, 2), (3, 4, 5), (-1.0, -1.0, -1.0), "be brief")


def test_only_set_fields_override_and_float32_values_read_as_written() -> None:
    proto = common_pb2.SdpoConfig(learning_rate=2e-4, alpha=0.3, steps=2, teacher_mode=common_pb2.TEACHER_MODE_SELF)
    overrides = convert.config_from_proto(proto)
    assert overrides == {"alpha": 0.3, "learning_rate": 2e-4, "steps": 2, "teacher_mode": "self"}
    config = SdpoConfig().with_overrides(**overrides)
    assert (config.learning_rate, config.top_k, config.loss) == (2e-4, 100, "jsd")


def test_an_unspecified_teacher_mode_keeps_the_default_and_remote_is_refused() -> None:
    unspecified = common_pb2.SdpoConfig(teacher_mode=common_pb2.TEACHER_MODE_UNSPECIFIED)
    assert convert.config_from_proto(unspecified) == {}
    remote = common_pb2.SdpoConfig(teacher_mode=common_pb2.TEACHER_MODE_REMOTE)
    with pytest.raises(ClaasError, match="teacher_mode must be BASE, SELF or TRUST_REGION, got TEACHER_MODE_REMOTE"):
        convert.config_from_proto(remote)


def test_json_overrides_become_the_proto_and_read_back_as_the_same_overrides() -> None:
    proto = convert.config_to_proto({"learning_rate": 2e-4, "topK": 7, "teacher_mode": "TEACHER_MODE_SELF"})
    assert convert.config_from_proto(proto) == {"learning_rate": 2e-4, "top_k": 7, "teacher_mode": "self"}
    assert convert.config_to_proto(None) is None and convert.config_to_proto({}) is None


@pytest.mark.parametrize("body", [{"bogus": 1}, {"steps": "many"}])
def test_json_overrides_that_do_not_parse_are_invalid_config(body: dict) -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid config: ") as caught:
        convert.config_to_proto(body)
    assert caught.value.param == "config"


def test_a_sample_round_trips() -> None:
    assert convert.sample_from_proto(convert.sample_to_proto(SAMPLE)) == SAMPLE


def test_a_job_view_round_trips() -> None:
    metrics = StepMetrics(1, 0.5, 0.25, 0.0, 1.0, 0.0, 0.5, 3, -0.125)
    view = JobView("j", "acme/bot", JobState.TRAINING, 1, 0, 1, 2, (metrics,), "", ("j", "k"))
    assert convert.job_view_from_proto(convert.job_view_to_proto(view)) == view
