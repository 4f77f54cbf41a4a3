"""Run configuration and preference files: validated, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.eval.config import ConfigError, describe, load_config
from services.cli.eval.preferences import PreferenceError, builtin, load


def test_defaults_file_and_overrides_combine(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("steps: 5\nsdpo:\n  steps: 2\npreferences: [concise]\n")
    config = load_config(path, ["steps=3", "sdpo.learning_rate=5e-5", "judge.enabled=false"])
    assert config.steps == 3 and config.sdpo.steps == 2 and config.sdpo.learning_rate == 5e-5
    assert config.preferences == ["concise"] and config.rollouts_per_step == 4
    assert "steps: 3" in describe(config) and "learning_rate: 5.0e-05" in describe(config)


def test_a_list_override_is_read_as_yaml() -> None:
    assert load_config(None, ["preferences=[identity, no_emoji]"]).preferences == ["identity", "no_emoji"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("steps=0", "steps"),
        ("steps=many", "steps"),
        ("sdpo.learning_rate=1", "sdpo.learning_rate"),
        ("collapse.samples=1", "collapse.samples"),
        ("sdpo.nonsense=1", "sdpo.nonsense"),
        ("nonsense=1", "nonsense"),
        ("judge.enabled=true", "judge.base_url"),
        ("steps.deeper=1", "steps"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert named in str(caught.value)


def test_an_override_without_equals_sign_is_refused() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["steps"])


def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("- steps\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_the_three_builtin_preferences_load() -> None:
    prefs = builtin()
    assert set(prefs) == {"identity", "concise", "no_emoji"}
    assert prefs["identity"].target == "Kuro" and prefs["identity"].feedback.startswith("Your name is Kuro")
    assert all(p.logprob_pairs and p.held_out and p.probe_prompts for p in prefs.values())
    assert prefs["no_emoji"].decision_direction == "lower"


def test_a_user_preference_file_loads_and_a_bad_one_names_the_key(tmp_path: Path) -> None:
    good = tmp_path / "pirate.yaml"
    good.write_text(
        "name: pirate\nfeedback: Talk like a pirate.\nverifier: identity\ntarget: arr\n"
        "probe_prompts: [Hello]\nheld_out: [Hi]\n"
        "logprob_pairs: [{prompt: Hi, preferred: Arr matey, dispreferred: Hello there}]\n"
    )
    assert load(str(good)).name == "pirate" and load(str(good)).passes("Arr, matey!")
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("verifier: identity", "verifier: telepathy"))
    with pytest.raises(PreferenceError, match=r"bad\.yaml: verifier"):
        load(str(bad))
    no_target = tmp_path / "no_target.yaml"
    no_target.write_text(good.read_text().replace("target: arr\n", ""))
    with pytest.raises(PreferenceError, match="target"):
        load(str(no_target))


def test_an_unknown_preference_lists_the_builtin_ones(tmp_path: Path) -> None:
    with pytest.raises(PreferenceError, match="concise, identity, no_emoji"):
        load("kindness")
    with pytest.raises(PreferenceError, match="no such preference file"):
        load(str(tmp_path / "missing.yaml"))
