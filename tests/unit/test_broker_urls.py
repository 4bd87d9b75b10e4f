"""Several broker nodes in one setting: the comma form of the URL, a list of URLs, JSON.

Every form names the nodes of one broker, tried in order; they may differ only in host and
port. A bad address is refused with a message that names it, never with the password.
"""

from __future__ import annotations

import os

import pytest
from inventory_service.settings import InventorySettings
from pydantic import ValidationError
from sagakit import BrokerUrlError
from sagakit.broker import BrokerHost, broker_hosts, broker_urls, redacted
from sagakit.runtime._settings import SHARED_BROKER_VARIABLES

THREE = (
    "amqp://user:pw@node1:5672/vh",
    "amqp://user:pw@node2:5673/vh",
    "amqp://user:pw@node3/vh",
)


@pytest.mark.parametrize(
    "value",
    [
        "amqp://user:pw@node1:5672,node2:5673,node3/vh",
        "amqp://user:pw@node1:5672/vh,amqp://user:pw@node2:5673/vh,amqp://user:pw@node3/vh",
        "amqp://user:pw@node1:5672/vh, amqp://user:pw@node2:5673,node3/vh",
        '["amqp://user:pw@node1:5672/vh", "amqp://user:pw@node2:5673,node3/vh"]',
        list(THREE),
    ],
)
def test_every_form_names_the_same_nodes_in_order(value: str | list[str]) -> None:
    assert broker_urls(value) == THREE
    assert broker_hosts(broker_urls(value)) == (
        BrokerHost("node1", 5672),
        BrokerHost("node2", 5673),
        BrokerHost("node3", None),
    )


def test_one_url_is_one_node_and_keeps_its_options() -> None:
    url = "amqps://user:pw@broker.internal:5671/orders?heartbeat=30&auth=external"
    assert broker_urls(url) == (url,)


def test_a_password_may_hold_a_comma() -> None:
    urls = broker_urls("amqp://user:a,b@node1,node2/")
    assert urls == ("amqp://user:a,b@node1/", "amqp://user:a,b@node2/")


def test_ipv6_hosts_keep_their_brackets() -> None:
    urls = broker_urls("amqp://u:p@[::1]:5672,[::1]:5673/")
    assert broker_hosts(urls) == (BrokerHost("::1", 5672), BrokerHost("::1", 5673))


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("", "no broker URL"),
        ("http://user:s3cret@node1/", "not an amqp"),
        ("amqp://user:s3cret@node1:56x72,node2/", "no valid port"),
        ("amqp://user:s3cret@node1:70000/", "no valid port"),
        ("amqp://user:s3cret@node1,,node2/", "empty host"),
        ("amqp://user:s3cret@node1/a,amqp://user:s3cret@node2/b", "differ only in host"),
        ("amqp://user:s3cret@node1/,amqp://other:s3cret@node2/", "differ only in host"),
        ('["amqp://user:s3cret@node1/", 5]', "JSON list of strings"),
        ("[amqp://user:s3cret@node1/", "not valid JSON"),
    ],
)
def test_a_bad_address_is_refused_without_its_password(value: str, complaint: str) -> None:
    with pytest.raises(BrokerUrlError, match=complaint) as raised:
        broker_urls(value)
    assert "s3cret" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_redacted_hides_every_password_of_every_form() -> None:
    assert redacted("amqp://user:s3cret@node1:5672,node2:5673/vh") == (
        "amqp://user:***@node1:5672,node2:5673/vh"
    )
    assert redacted("amqp://user:s3cret@node1/vh,amqp://user:s3cret@node2/vh") == (
        "amqp://user:***@node1,node2/vh"
    )
    assert redacted("amqp://node1/") == "amqp://node1/"
    assert redacted("not a url at all") == "not a url at all"


# -- the services' settings --------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("INVENTORY_") or key in {"SAGAKIT_ENV", *SHARED_BROKER_VARIABLES}:
            monkeypatch.delenv(key)
    return monkeypatch


def test_a_service_takes_the_comma_form(env: pytest.MonkeyPatch) -> None:
    env.setenv("INVENTORY_RABBITMQ_URL", "amqp://user:pw@node1:5672,node2:5673,node3/vh")
    assert InventorySettings().broker_urls == THREE


@pytest.mark.parametrize(
    "variable", ["INVENTORY_RABBITMQ_URLS", "RABBITMQ_URLS"], ids=["own", "shared"]
)
def test_a_service_takes_a_list_of_urls(env: pytest.MonkeyPatch, variable: str) -> None:
    env.setenv(variable, ",".join(THREE))
    assert InventorySettings().broker_urls == THREE
    env.setenv(variable, f'["{THREE[0]}", "{THREE[1]}", "{THREE[2]}"]')
    assert InventorySettings().broker_urls == THREE


def test_its_own_setting_wins_over_the_shared_list(env: pytest.MonkeyPatch) -> None:
    env.setenv("RABBITMQ_URLS", ",".join(THREE))
    env.setenv("INVENTORY_RABBITMQ_URL", "amqp://own:pw@mine/")
    assert InventorySettings().broker_urls == ("amqp://own:pw@mine/",)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("INVENTORY_RABBITMQ_URL", "INVENTORY_RABBITMQ_URLS"),
        ("RABBITMQ_URL", "RABBITMQ_URLS"),
    ],
)
def test_a_url_and_a_list_together_are_refused(
    env: pytest.MonkeyPatch, first: str, second: str
) -> None:
    env.setenv(first, THREE[0])
    env.setenv(second, ",".join(THREE))
    with pytest.raises(ValidationError, match=f"{first} or {second}, not both"):
        InventorySettings()


def test_a_bad_node_stops_the_service_before_it_starts(env: pytest.MonkeyPatch) -> None:
    env.setenv("INVENTORY_RABBITMQ_URL", "amqp://user:s3cret@node1:5672,node2:x/")
    with pytest.raises(ValidationError, match="no valid port") as raised:
        InventorySettings()
    assert "s3cret" not in str(raised.value)


def test_outside_development_no_node_may_use_guest(env: pytest.MonkeyPatch) -> None:
    env.setenv("SAGAKIT_ENV", "production")
    env.setenv("INVENTORY_RABBITMQ_URLS", "amqp://own:pw@node1/,amqp://own:pw@node2/")
    assert len(InventorySettings().broker_urls) == 2
    env.setenv("INVENTORY_RABBITMQ_URLS", "amqp://guest:guest@node1,node2/")
    with pytest.raises(ValidationError, match="guest"):
        InventorySettings()
