"""The outbox is plumbing: workers imports no domain app, and no two of its modules cycle."""

from __future__ import annotations

import grimp
import pytest

DOMAIN_APPS = ("accounts", "consultations", "messaging")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("workers", *DOMAIN_APPS, "medease", cache_dir=None)


@pytest.mark.parametrize("app", DOMAIN_APPS)
def test_workers_imports_no_domain_app(graph, app):
    chain = graph.find_shortest_chain(importer="workers", imported=app, as_packages=True)
    assert chain is None, f"workers reaches {app} via {' -> '.join(chain)}"


def test_the_services_do_not_import_the_tasks(graph):
    # Tasks call services; services enqueue the delivery task by name.
    chain = graph.find_shortest_chain(
        importer="workers.services", imported="workers.tasks", as_packages=True
    )
    assert chain is None, f"services reach the tasks via {' -> '.join(chain)}"
    assert graph.find_shortest_chain(importer="workers.tasks", imported="workers.services")


def test_domain_apps_plug_into_the_outbox_not_the_reverse(graph):
    assert graph.direct_import_exists(
        importer="consultations.notifications", imported="workers.services"
    )
    assert graph.direct_import_exists(
        importer="messaging.notifications", imported="workers.services"
    )
