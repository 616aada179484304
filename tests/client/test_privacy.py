from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.privacy import (
    BudgetExhausted,
    PrivacyBudget,
    PrivacyConfigError,
    PrivacyLedger,
    effective_budget,
    plan_noise_multiplier,
)
from client.site import RoundSettings, SiteSession, SiteSettings
from simulation.synthetic import generate_dual_center

torch.set_num_threads(1)

BAD_BUDGETS = [
    ({"dp-epsilon": -1}, "dp-epsilon must be > 0"),
    ({"dp-epsilon": 1, "dp-delta": 2}, r"dp-delta must be in \(0, 1\)"),
    ({"dp-epsilon": 1, "dp-max-grad-norm": -3}, "dp-max-grad-norm must be > 0"),
    ({"dp-epsilon": "lots"}, "DP settings must be numbers"),
]


@pytest.mark.parametrize(("config", "message"), BAD_BUDGETS)
def test_bad_budgets_name_the_setting(config: dict, message: str) -> None:
    with pytest.raises(PrivacyConfigError, match=message):
        PrivacyBudget.from_config(config, source="node config")


def test_no_epsilon_means_no_dp() -> None:
    assert PrivacyBudget.from_config({}, source="node config") is None


STRICTER = [
    # site, server request, expected
    ((1.0, 1e-5, 1.0), (10.0, 1e-3, 5.0), (1.0, 1e-5, 1.0)),  # the server cannot loosen
    ((8.0, 1e-5, 2.0), (2.0, 1e-6, 0.5), (2.0, 1e-6, 0.5)),  # the server can tighten
    ((3.0, 1e-5, 1.0), None, (3.0, 1e-5, 1.0)),
    (None, (3.0, 1e-5, 1.0), (3.0, 1e-5, 1.0)),
]


@pytest.mark.parametrize(("site", "requested", "expected"), STRICTER)
def test_effective_budget_is_the_stricter(site, requested, expected) -> None:
    make = lambda v: None if v is None else PrivacyBudget(*v)  # noqa: E731
    result = effective_budget(make(site), make(requested))
    assert (result.epsilon, result.delta, result.max_grad_norm) == expected


def test_planned_noise_spends_the_budget_and_ledger_round_trips() -> None:
    budget = PrivacyBudget(epsilon=2.0, delta=1e-5)
    noise = plan_noise_multiplier(budget, sample_rate=0.1, total_steps=60)
    ledger = PrivacyLedger().after(noise, 0.1, 30)
    half = ledger.spent(budget.delta)
    full = ledger.after(noise, 0.1, 30).spent(budget.delta)
    assert 0 < half < full <= 2.0 * 1.01
    assert full == pytest.approx(2.0, rel=0.02)
    assert PrivacyLedger.from_record(ledger.to_record()) == ledger


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dual_center(
        tmp_path_factory.mktemp("dp"),
        patients_per_site=(("a", 10), ("b", 4)),
        images_per_patient=(1, 2),
        image_size=32,
        high_grade_fraction=0.4,
        seed=2,
    )


def _rounds(server_round: int, num_rounds: int, *, dp_safe: bool = True) -> RoundSettings:
    return RoundSettings.from_config(
        {
            "backbone": "test_efficientnet",
            "image-size": 32,
            "batch-size": 4,
            "server-round": server_round,
            "num-server-rounds": num_rounds,
            "learning-rate": 0.01,
            "dp-safe-model": dp_safe,
        }
    )


def test_dp_rounds_spend_within_budget_then_decline(manifest: Path) -> None:
    settings = SiteSettings.from_node_config(
        {"data-path": str(manifest), "site-id": "a", "dp-epsilon": 3.0, "dp-delta": 1e-4}
    )
    session = SiteSession(settings, _rounds(1, 2).task, dp_safe=True)
    budget = session.privacy_budget(_rounds(1, 2))
    ledger = PrivacyLedger()
    spent = []
    for server_round in (1, 2):
        rounds = _rounds(server_round, 2)
        result, report, ledger = session.train_private(rounds, budget, ledger)
        assert result.num_steps > 0
        spent.append(report.epsilon_spent)
    assert 0 < spent[0] < spent[1] <= 3.0 * 1.01
    # a third round was not planned: it would overspend, so the site declines
    with pytest.raises(BudgetExhausted, match="declines round 3"):
        session.train_private(_rounds(3, 2), budget, ledger)


def test_site_with_budget_refuses_a_batchnorm_model(manifest: Path) -> None:
    settings = SiteSettings.from_node_config(
        {"data-path": str(manifest), "site-id": "a", "dp-epsilon": 3.0}
    )
    rounds = _rounds(1, 2, dp_safe=False)
    session = SiteSession(settings, rounds.task)
    with pytest.raises(PrivacyConfigError, match="dp-safe-model=true"):
        session.privacy_budget(rounds)
