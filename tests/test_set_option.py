"""``--set KNOB=VALUE``: a parameter fixed from the command line (an ablation of a recipe),
validated like the file, recorded in run.json and passed on to workers."""
from __future__ import annotations

import pytest

from conftest import SPACES
from cnnbench.space import SpaceError


def test_set_fixes_a_parameter_drops_it_from_start_with_and_is_recorded(tmp_path):
    from cnnbench.sweep import SweepRequest, prepare

    request = SweepRequest(space_file=str(SPACES / "default.yaml"), results=str(tmp_path),
                           sets=("widths=64-128-128", "lookahead=false", "label_smoothing=0"))
    prepared = prepare(request)
    space = prepared.space
    assert "widths" not in space.searched() and "bn_momentum" in space.searched()
    config = space.complete({name: space.centre()[name] for name in space.searched()})
    assert (config["widths"], config["lookahead"], config["label_smoothing"]) == ("64-128-128", False, 0.0)
    assert space.start_with and all("widths" not in recipe for recipe in space.start_with)
    assert prepared.run["set"] == list(request.sets)
    assert prepared.run["space"]["params"]["lookahead"]["value"] is False
    worker = request.worker_command()
    assert worker[worker.index("--set") + 1] == "widths=64-128-128" and worker.count("--set") == 3


def test_a_study_made_without_a_setting_does_not_continue_with_it(tmp_path):
    from cnnbench.sweep import SweepRequest, prepare
    from cnnbench.files import atomic_write, json_text

    plain = prepare(SweepRequest(space_file=str(SPACES / "airbench94.yaml"), study="s", results=str(tmp_path)))
    plain.paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write(plain.paths.root / "run.json", json_text(plain.run))
    with pytest.raises(SpaceError, match="different space"):
        prepare(SweepRequest(space_file=str(SPACES / "airbench94.yaml"), study="s", results=str(tmp_path),
                             sets=("lookahead=false",)))


@pytest.mark.parametrize("setting, problem", [
    ("lookahead", "write it as KNOB=VALUE"),
    ("=3", "write it as KNOB=VALUE"),
    ("lookahaed=false", "unknown parameter 'lookahaed'"),
    ("flip=sideways", "'sideways' is not one of off, random, alternating"),
    ("epochs=0", "below the minimum"),
])
def test_a_bad_setting_is_one_message_naming_the_option(tmp_path, setting, problem):
    from cnnbench.sweep import SweepRequest, prepare

    with pytest.raises(SpaceError, match="--set") as raised:
        prepare(SweepRequest(space_file=str(SPACES / "airbench94.yaml"), results=str(tmp_path), sets=(setting,)))
    assert problem in str(raised.value) and "\n" not in str(raised.value)
