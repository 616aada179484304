from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from client.privacy import (
    BudgetExhausted,
    PrivacyBudget,
    PrivacyConfigError,
    PrivacyLedger,
    dp_generator,
    effective_budget,
    grad_sample_mode_for,
    make_private,
    plan_noise_multiplier,
)
from client.site import RoundSettings, SiteSession, SiteSettings
from models import create_model_for_task, get_task
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


def test_fixed_noise_multiplier_is_used_and_the_budget_still_caps(manifest: Path) -> None:
    budget = PrivacyBudget.from_config(
        {"dp-epsilon": 3.0, "dp-delta": 1e-4, "dp-noise-multiplier": 2.0}, source="node config"
    )
    assert budget.noise_multiplier == 2.0
    # the stricter of site and server: the larger fixed noise
    stricter = effective_budget(budget, PrivacyBudget(epsilon=9.0, noise_multiplier=3.0))
    assert stricter.noise_multiplier == 3.0 and stricter.epsilon == 3.0
    settings = SiteSettings.from_node_config(
        {"data-path": str(manifest), "site-id": "a", "dp-epsilon": 3.0, "dp-delta": 1e-4,
         "dp-noise-multiplier": 2.0}
    )  # fmt: skip
    session = SiteSession(settings, _rounds(1, 50).task, dp_safe=True)
    ledger, reports = PrivacyLedger(), []
    with pytest.raises(BudgetExhausted, match="above the site's budget 3"):
        for server_round in range(1, 51):  # far more rounds than a budget of 3 allows
            _, report, ledger = session.train_private(_rounds(server_round, 50), budget, ledger)
            reports.append(report)
    # it trained with the site's noise (not a planned one) until the cap
    assert len(reports) >= 1 and all(r.noise_multiplier == 2.0 for r in reports)
    assert reports[-1].epsilon_spent <= 3.0 * 1.001


def test_site_with_budget_refuses_a_batchnorm_model(manifest: Path) -> None:
    settings = SiteSettings.from_node_config(
        {"data-path": str(manifest), "site-id": "a", "dp-epsilon": 3.0}
    )
    rounds = _rounds(1, 2, dp_safe=False)
    session = SiteSession(settings, rounds.task)
    with pytest.raises(PrivacyConfigError, match="dp-safe-model=true"):
        session.privacy_budget(rounds)


def _per_sample_grads(model: torch.nn.Module, mode: str, batch) -> dict[str, torch.Tensor]:
    from opacus.grad_sample import get_gsm_class

    wrapped = get_gsm_class(mode)(model, batch_first=True, loss_reduction="sum")
    *inputs, target = batch
    torch.nn.functional.cross_entropy(wrapped(*inputs), target, reduction="sum").backward()
    return {n.removeprefix("_module."): p.grad_sample for n, p in wrapped.named_parameters()}


def test_expanded_weights_give_the_per_sample_gradients_of_the_two_branch_model() -> None:
    """The site trains MUF-Net with Opacus' expanded-weights mode (the fastest measured):
    its per-sample gradients equal Opacus' hooks and a loop over single samples, although
    the two branches share their weights."""
    task = get_task("rcc-grading").replace(backbone="test_efficientnet", image_size=32)
    torch.manual_seed(0)
    model = create_model_for_task(task, dp_safe=True).train()
    for module in model.modules():  # deterministic forward passes
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    assert grad_sample_mode_for(model) == "ew"
    batch = (torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 1]))
    ew = _per_sample_grads(copy.deepcopy(model), "ew", batch)
    hooks = _per_sample_grads(copy.deepcopy(model), "hooks", batch)
    single = []
    for i in range(3):
        one = copy.deepcopy(model)
        x1, x2, y = (t[i : i + 1] for t in batch)
        torch.nn.functional.cross_entropy(one(x1, x2), y, reduction="sum").backward()
        single.append({n: p.grad for n, p in one.named_parameters()})
    assert set(ew) == set(hooks) == set(single[0])
    for name, grads in ew.items():
        loop = torch.stack([s[name] for s in single])
        torch.testing.assert_close(grads, hooks[name], rtol=1e-4, atol=1e-6)
        # float32 sums in another order: compare against the tensor's own scale
        scale = float(loop.abs().max())
        torch.testing.assert_close(grads, loop, rtol=1e-3, atol=1e-3 * scale + 1e-7)


def test_models_with_other_layers_keep_opacus_hooks() -> None:
    gru = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GRU(4, 2))
    assert grad_sample_mode_for(gru) == "hooks"
    assert grad_sample_mode_for(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))) == "ew"


# --- DP randomness: the coordinator's seed must not make DP-SGD predictable ----------------


def _tiny_private(*, noise_multiplier: float = 1.0, rows: int = 32, batch_size: int = 8):
    """A linear model wrapped by make_private, built identically after torch.manual_seed(0);
    the dataset's second tensor is each row's index (to read Poisson batches)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(rows, 4), torch.arange(rows))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return make_private(
        model,
        optimizer,
        DataLoader(data, batch_size=batch_size),
        noise_multiplier=noise_multiplier,
        max_grad_norm=1.0,
    )


def _dp_step(model, optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_dp_noise_does_not_follow_the_global_seed() -> None:
    x, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 3)
    stepped = {}
    for noise in (1.0, 0.0):
        runs = []
        for _ in range(2):
            model, optimizer, _, _ = _tiny_private(noise_multiplier=noise)
            torch.manual_seed(0)  # e.g. training_seed(seed, round, site): the coordinator's
            runs.append(_dp_step(model, optimizer, x, y))
        stepped[noise] = runs
    # same start, same data, same global seed: only the noise differs ...
    assert not torch.allclose(stepped[1.0][0], stepped[1.0][1])
    # ... and without noise the two steps are the same (so the difference is the noise)
    torch.testing.assert_close(stepped[0.0][0], stepped[0.0][1])


def test_poisson_batches_do_not_follow_the_global_seed() -> None:
    draws = []
    for _ in range(2):
        _, _, loader, _ = _tiny_private()
        torch.manual_seed(0)
        draws.append([batch[1].tolist() for batch in loader])
    assert len(draws[0]) == len(draws[1]) == 4  # 1 / sample rate batches per epoch
    assert draws[0] != draws[1]  # 32 rows x 4 batches: equal by chance with p = 2^-128


def test_a_dp_step_leaves_the_global_generator_alone() -> None:
    model, optimizer, loader, engine = _tiny_private()
    before = torch.get_rng_state()
    for x, index in loader:  # Poisson sampling, forward, clipping, noise
        _dp_step(model, optimizer, x, index % 2)
    assert torch.equal(torch.get_rng_state(), before)
    # the accountant sees the original loader's rate (site.py plans with 1 / len(loader))
    assert engine.accountant.history == [(1.0, 1 / 4, 4)]


def test_make_private_replaces_opacus_secure_rng_warning_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import client.privacy as privacy

    privacy._rng_explained = False
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        _tiny_private()
        _tiny_private()
    assert not [w for w in caught if "Secure RNG" in str(w.message)]
    lines = [r.getMessage() for r in caplog.records if "CSPRNG" in r.getMessage()]
    assert len(lines) == 1 and "secure_mode" in lines[0]  # once per process, and honest


def test_dp_generators_are_seeded_from_the_os() -> None:
    torch.manual_seed(0)
    first = dp_generator().initial_seed()
    torch.manual_seed(0)
    assert dp_generator().initial_seed() != first
