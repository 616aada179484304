"""`fedfusion site run`: node config and flower-supernode command, checked with Flower's parsers."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from client.deploy_cli import (
    SiteRunError,
    build_node_config,
    build_supernode_command,
    format_node_config,
)
from client.keys import create_site_keys
from simulation.cli import main
from simulation.synthetic import generate_dual_center

# Node configs that must survive Flower's `--node-config` parsing unchanged.
ROUND_TRIP = [
    {"data-path": "/data/site a/manifest.csv", "site-id": "center-a"},
    {"data-path": r"C:\hospital\data\manifest.csv", "site-id": "b"},
    {"data-path": "/data/o'brien/manifest.csv", "site-id": "x"},
    {
        "data-path": "/m.csv",
        "site-id": "a",
        "dp-epsilon": 8.0,
        "dp-delta": 1e-05,
        "dp-max-grad-norm": 1.5,
    },
    {"flag": True, "n": 3},
]

# (kwargs for build_node_config, message fragment)
BAD_BUDGETS = [
    ({"dp_epsilon": 0.0}, "dp-epsilon must be > 0"),
    ({"dp_epsilon": float("inf")}, "dp-epsilon must be > 0"),
    ({"dp_epsilon": 1.0, "dp_delta": 1.0}, "dp-delta must be in (0, 1)"),
    ({"dp_epsilon": 1.0, "dp_max_grad_norm": -1.0}, "dp-max-grad-norm must be > 0"),
    ({"dp_delta": 1e-5}, "--dp-delta need --dp-epsilon"),
    ({"dp_noise_multiplier": 1.0}, "--dp-noise-multiplier need --dp-epsilon"),
    ({"dp_epsilon": 1.0, "dp_noise_multiplier": 0.0}, "dp-noise-multiplier must be > 0"),
    ({"site_id": " "}, "site id must not be empty"),
]


@pytest.mark.parametrize("config", ROUND_TRIP)
def test_node_config_round_trips_through_flower(config: dict[str, object]) -> None:
    assert parse_config_args([format_node_config(config)]) == config


def test_node_config_refuses_unrepresentable_values() -> None:
    with pytest.raises(SiteRunError, match="cannot hold a single quote"):
        format_node_config({"data-path": "/a'b\"c"})
    with pytest.raises(SiteRunError, match="single words"):
        format_node_config({"data path": "x"})


def test_build_node_config(tmp_path: Path) -> None:
    config = build_node_config(
        manifest=tmp_path / "m.csv", site_id="center-a", dp_epsilon=8, dp_delta=1e-5
    )
    assert config == {
        "data-path": str(tmp_path / "m.csv"),
        "site-id": "center-a",
        "dp-epsilon": 8.0,
        "dp-delta": 1e-5,
    }
    assert build_node_config(manifest="m.csv", site_id="a")["data-path"] == str(
        Path("m.csv").absolute()
    )
    fixed = build_node_config(manifest="m.csv", site_id="a", dp_epsilon=8, dp_noise_multiplier=1.1)
    assert fixed["dp-noise-multiplier"] == 1.1


@pytest.mark.parametrize(("kwargs", "fragment"), BAD_BUDGETS)
def test_bad_budgets_are_refused(kwargs: dict[str, object], fragment: str) -> None:
    settings: dict[str, object] = {"manifest": "m.csv", "site_id": "a", **kwargs}
    with pytest.raises(SiteRunError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build_node_config(**settings)  # type: ignore[arg-type]


def test_supernode_command_parses_as_flower_expects() -> None:
    node_config = build_node_config(
        manifest="/data/manifest.csv", site_id="center-a", dp_epsilon=4.0, dp_max_grad_norm=1.0
    )
    command = build_supernode_command(
        superlink="superlink.org:8000",
        node_config=node_config,
        root_certificates="/keys/ca.crt",
        auth_key="/keys/center-a.key",
        port=9101,
        max_retries=3,
    )
    assert command[0] == "flower-supernode" and "--insecure" not in command
    args = _parse_args_run_supernode().parse_args(command[1:])
    assert args.superlink == "superlink.org:8000"
    assert args.root_certificates == "/keys/ca.crt"
    assert args.auth_supernode_private_key == "/keys/center-a.key"
    assert (args.port, args.max_retries, args.insecure) == (9101, 3, False)
    assert parse_config_args([args.node_config]) == {
        "data-path": "/data/manifest.csv",
        "site-id": "center-a",
        "dp-epsilon": 4.0,
        "dp-max-grad-norm": 1.0,
    }


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"root_certificates": None}, "TLS is on by default"),
        ({"insecure": True}, "do not also give --root-certificates"),
        ({"insecure": True, "root_certificates": None}, "node authentication needs TLS"),
        ({"superlink": "https://x.org:8000"}, "HOST:PORT without a scheme"),
        ({"superlink": "x.org"}, "HOST:PORT"),
        ({"port": 70000}, "port must be in 1..65535"),
    ],
)
def test_supernode_contradictions(kwargs: dict[str, object], fragment: str) -> None:
    settings: dict[str, object] = {
        "superlink": "127.0.0.1:8000",
        "node_config": {"site-id": "a"},
        "root_certificates": "ca.crt",
        "auth_key": "a.key",
        **kwargs,
    }
    with pytest.raises(SiteRunError, match=fragment):
        build_supernode_command(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("site")
    manifest = generate_dual_center(
        root / "data",
        patients_per_site=(("center-a", 4), ("center-b", 4)),
        images_per_patient=(1, 1),
        image_size=16,
        high_grade_fraction=0.5,
    )
    keys = create_site_keys(root / "keys", name="center-a")
    ca = root / "ca.crt"
    ca.write_text("not used by a dry run\n")
    return {"manifest": manifest, "key": keys.private_key, "ca": ca, "root": root}


def _run_argv(site: dict[str, Path], *extra: str) -> list[str]:
    return [
        "site", "run", "--manifest", str(site["manifest"]), "--site-id", "center-a",
        "--superlink", "127.0.0.1:8000", "--root-certificates", str(site["ca"]),
        "--auth-key", str(site["key"]), "--port", "9101", "--dry-run", *extra,
    ]  # fmt: skip


def test_cli_dry_run(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_run_argv(site, "--dp-epsilon", "8", "--dp-delta", "1e-5")) == 0
    out, err = capsys.readouterr()
    line = out.strip().splitlines()[-1]
    assert "flower-supernode" in line and "--auth-supernode-private-key" in line
    assert f'data-path="{site["manifest"]}"' in line and 'site-id="center-a"' in line
    assert "dp-epsilon=8.0" in line and "dp-delta=1e-05" in line
    assert "without local differential privacy" not in err
    assert main(_run_argv(site)) == 0
    assert "without local differential privacy" in capsys.readouterr().err


def test_cli_refuses_an_invalid_manifest(
    site: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    broken = site["root"] / "data" / "broken.csv"
    text = site["manifest"].read_text().splitlines()
    header = text[0].split(",")
    rows = [line.split(",") for line in text[1:]]
    column = header.index("label")
    for row in rows:
        row[column] = "grade-9"
    broken.write_text("\n".join([text[0], *(",".join(r) for r in rows)]) + "\n")
    argv = _run_argv(site)
    argv[argv.index(str(site["manifest"]))] = str(broken)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to start the site" in err and "not valid for task rcc-grading" in err
    assert "fedfusion site check" in err


def test_cli_refuses_unknown_site_and_bad_key(
    site: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _run_argv(site)
    argv[argv.index("center-a")] = "center-z"
    assert main(argv) == 2
    assert "unknown site 'center-z'" in capsys.readouterr().err
    argv = _run_argv(site)
    argv[argv.index(str(site["key"]))] = str(site["ca"])
    assert main(argv) == 2
    assert "not an unencrypted OpenSSH private key" in capsys.readouterr().err
