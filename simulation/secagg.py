"""Simulated sites for secure aggregation: the SecAgg+ ClientApp with a real site's node config.

The counterpart of ``simulation.runner._simulated_client`` for :mod:`client.secagg_app`: the
legacy ClientApp is rebuilt around the same :class:`~client.secagg_app.SiteNumPyClient`, with
``secaggplus_mod`` outermost (it runs the four protocol stages of every train message and
calls the client only in the "collect masked vectors" stage), and each simulated node gets the
node config a hospital would pass (``data-path``, ``site-id`` from its ``partition-id``, and
the DP budget, if any).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from flwr.app import Context
from flwr.client import Client
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from client.secagg_app import SiteNumPyClient

__all__ = ["simulated_secagg_client", "as_site"]


def as_site(
    context: Context,
    *,
    manifest: Path | str,
    sites: Sequence[str],
    site_budget: Mapping[str, float] | None = None,
    per_site: Mapping[str, Mapping[str, float]] | None = None,
) -> Context:
    """``context`` with the node config of simulated site ``sites[partition-id]``
    (``site_budget`` for every site, then ``per_site[site]`` on top)."""
    partition = int(context.node_config["partition-id"])
    context.node_config["data-path"] = str(manifest)
    context.node_config["site-id"] = sites[partition]
    context.node_config.update(dict(site_budget or {}))
    context.node_config.update(dict((per_site or {}).get(sites[partition], {})))
    return context


def simulated_secagg_client(
    manifest: Path | str,
    sites: Sequence[str],
    site_budget: Mapping[str, float] | None = None,
    *,
    per_site: Mapping[str, Mapping[str, float]] | None = None,
    client_type: type[SiteNumPyClient] = SiteNumPyClient,
) -> ClientApp:
    """The SecAgg+ ClientApp, given the node config a real site would pass.

    Args:
        manifest: the manifest with every simulated site's rows (``site`` column).
        sites: site names; partition ``i`` is ``sites[i]``.
        site_budget: DP settings every site gets as its own node config; None = no local DP.
        per_site: node-config settings of single sites, over ``site_budget`` (by site name).
        client_type: the NumPyClient class (a subclass may observe what a site computes).
    """
    site_list = list(sites)

    def _client_fn(context: Context) -> Client:
        site = as_site(
            context, manifest=manifest, sites=site_list, site_budget=site_budget, per_site=per_site
        )
        return client_type(site).to_client()

    return ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])
