"""The tests' own promise about a shared broker: every session works in virtual hosts it
makes and deletes, made through the broker's management API when that answers, and the
tests that need one are skipped (failed in CI) rather than run where they cannot be.

A private node with the management plugin stands for a developer's remote broker: its
``rabbitmqctl`` is out of reach (the tests' rabbitmqctl only ever talks to the machine's
default node), so a virtual host on it can only come from its HTTP API.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from sagakit.broker import with_vhost
from sagakit_lab import RabbitNode

from tests.brokers import call, throwaway_vhost, unavailable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A node with the management API, and a user without the administrator tag."""
    from sagakit_lab import rabbitmq_missing

    reason = rabbitmq_missing()
    if reason is not None:
        unavailable(f"needs a private node with the management plugin: {reason}")
    node = RabbitNode(tmp_path_factory.mktemp("remote"), management=True)
    node.start()
    try:
        node.ctl("add_user", "plain", "plain-pw")
        yield node
    finally:
        node.kill()  # throwaway: nothing in it needs a clean shutdown


def _vhosts(node: RabbitNode) -> set[str]:
    return set(node.ctl("list_vhosts", "--no-table-headers").split())


async def _reachable(url: str) -> bool:
    import aio_pika

    connection = await aio_pika.connect(url, timeout=5)
    await connection.close()
    return True


def test_a_vhost_is_made_through_the_management_api_and_deleted_after(
    remote: RabbitNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert remote.management_url is not None
    monkeypatch.setenv("RABBITMQ_MANAGEMENT_URL", remote.management_url)
    before = _vhosts(remote)
    with throwaway_vhost(remote.url) as url:
        made = _vhosts(remote) - before
        assert len(made) == 1
        [vhost] = made
        assert vhost.startswith("sagakit-test-")
        assert url == with_vhost(remote.url, vhost)
        assert call(lambda: _reachable(url))
    assert _vhosts(remote) == before


@pytest.mark.parametrize("ci", [False, True], ids=["developer", "ci"])
def test_no_way_to_make_a_vhost_skips_or_fails_in_ci(
    remote: RabbitNode, monkeypatch: pytest.MonkeyPatch, ci: bool
) -> None:
    assert remote.management_url is not None
    monkeypatch.setenv("RABBITMQ_MANAGEMENT_URL", remote.management_url)
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    # A user the API refuses (no administrator tag), on a broker rabbitmqctl cannot reach.
    url = remote.url_for(user="plain", password="plain-pw").replace("127.0.0.1", "localhost")
    which = shutil.which  # and no rabbitmqctl on this machine
    monkeypatch.setattr(shutil, "which", lambda n: None if n == "rabbitmqctl" else which(n))
    before = _vhosts(remote)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="cannot make a throwaway virtual host"):  # noqa: SIM117
        with throwaway_vhost(url):
            pass
    assert _vhosts(remote) == before
