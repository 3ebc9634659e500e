"""``skip_environment_lookups``: requests' per-call environment scan is skipped only when it could
not change a request."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from samdrop.storage import GcsStore, skip_environment_lookups


def test_turned_off_when_the_environment_holds_nothing_for_requests(tmp_path: Path) -> None:
    session = requests.Session()
    assert skip_environment_lookups(session, {"PATH": "/bin", "SAMDROP_BUCKET": "b"}, tmp_path)
    assert session.trust_env is False


@pytest.mark.parametrize(
    "variable", ["HTTPS_PROXY", "https_proxy", "NO_PROXY", "all_proxy", "REQUESTS_CA_BUNDLE", "NETRC"]
)
def test_left_on_when_a_proxy_ca_bundle_or_netrc_is_set(variable: str, tmp_path: Path) -> None:
    session = requests.Session()
    assert not skip_environment_lookups(session, {variable: "x"}, tmp_path)
    assert session.trust_env is True


def test_left_on_when_a_netrc_file_exists(tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine storage.googleapis.com login x password y\n")
    session = requests.Session()
    assert not skip_environment_lookups(session, {}, tmp_path)
    assert session.trust_env is True


def test_proxies_still_apply_where_set(tmp_path: Path) -> None:
    """The point of leaving the session alone: a proxy in the environment still routes the call."""
    session = requests.Session()
    environ = {"HTTP_PROXY": "http://proxy.invalid:3128"}
    skip_environment_lookups(session, environ, tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HTTP_PROXY", environ["HTTP_PROXY"])
        settings = session.merge_environment_settings("http://example.invalid/", {}, None, None, None)
    assert settings["proxies"].get("http") == environ["HTTP_PROXY"]


def test_gcs_store_leaves_fakes_alone() -> None:
    class FakeClient:
        _http = object()

    GcsStore(FakeClient())  # no session to change, no error
    assert not skip_environment_lookups(object())
