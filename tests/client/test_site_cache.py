"""A process serving several sites keeps each site's session and decoded images."""

from __future__ import annotations

from pathlib import Path

import pytest

import client.dataset as dataset_module
from client import site as site_module
from client.site import RoundSettings, SiteConfigError, SiteSettings, get_session
from server.config import RunConfig
from simulation.synthetic import generate_dual_center


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dual_center(
        tmp_path_factory.mktemp("cache"),
        patients_per_site=(("a", 6), ("b", 6)),
        images_per_patient=(1, 1),
        image_size=32,
        high_grade_fraction=0.4,
        seed=3,
    )


def _rounds(server_round: int) -> RoundSettings:
    config = RunConfig.from_mapping(
        {"backbone": "test_efficientnet", "image-size": 32, "batch-size": 4}
    ).client_config()
    return RoundSettings.from_config({**config, "server-round": server_round})


def _settings(manifest: Path, site: str, cache: str = "auto") -> SiteSettings:
    return SiteSettings.from_node_config(
        {"data-path": str(manifest), "site-id": site, "cache-images": cache}
    )


def test_alternating_sites_reuse_their_sessions_and_share_one_model(manifest):
    site_module._SESSIONS.clear()
    site_module._MODELS.clear()
    rounds = _rounds(1)
    a = get_session(_settings(manifest, "a"), rounds)
    b = get_session(_settings(manifest, "b"), rounds)
    assert a is not b and a.site_id == "a" and b.site_id == "b"
    assert a.model is b.model  # overwritten by the global weights with every message
    assert get_session(_settings(manifest, "a"), _rounds(2)) is a
    assert get_session(_settings(manifest, "b"), _rounds(2)) is b


def test_decoded_images_are_read_once_across_rounds(manifest, monkeypatch):
    site_module._SESSIONS.clear()
    reads = []
    original = dataset_module.load_image

    def _counting(path):
        reads.append(path)
        return original(path)

    monkeypatch.setattr(dataset_module, "load_image", _counting)
    session = get_session(_settings(manifest, "a"), _rounds(1))
    session.train(_rounds(1))
    first = len(reads)
    assert first > 0 and session.image_cache("train")
    session.train(_rounds(2))
    assert len(reads) == first  # round 2 augments cached images, decodes nothing

    site_module._SESSIONS.clear()
    off = get_session(_settings(manifest, "a", cache="false"), _rounds(1))
    assert off.image_cache("train") is None
    reads.clear()
    off.train(_rounds(1))
    after_one = len(reads)
    off.train(_rounds(2))
    assert after_one > 0 and len(reads) > after_one  # without the cache every round decodes


def test_cache_images_must_be_auto_true_or_false(manifest):
    with pytest.raises(SiteConfigError, match="cache-images must be auto, true or false"):
        _settings(manifest, "a", cache="sometimes")
