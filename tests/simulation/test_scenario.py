from __future__ import annotations

import pytest

from models.tasks import get_task
from server.config import RunConfig
from simulation.scenario import ScenarioError, list_scenarios, load_scenario


def test_bundled_scenarios_load_and_are_valid():
    assert "dual-center" in list_scenarios()
    for name in list_scenarios():
        scenario = load_scenario(name)
        get_task(scenario.task)
        RunConfig.from_mapping({**scenario.run, "task": scenario.task})


def test_unknown_scenario_suggests_close_name():
    with pytest.raises(ValueError, match="Did you mean 'dual-center'"):
        load_scenario("dual-centre")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task = 'rcc-grading'\nbogus = 1\n", "unknown top-level keys"),
        ("description = 'x'\n", "missing 'task'"),
        ("task = 'rcc-grading'\ndata = 3\n", r"\[data\] must be a table"),
        ("task = [", "not valid TOML"),
    ],
)
def test_malformed_scenarios(tmp_path, text, message):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(str(path))
