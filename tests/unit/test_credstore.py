"""The client's stored credentials under $SECTOR_HOME/credentials."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sector.errors import UsageError
from sector.security import credstore
from sector.security.pki import ClusterCA

CA = ClusterCA.create()
OTHER = ClusterCA.create()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SECTOR_HOME", str(tmp_path))
    return tmp_path


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_save_load_remove(home: Path) -> None:
    cid = CA.cluster_id
    assert credstore.load(cid) is None and credstore.all() == []
    saved = credstore.save(
        cid, ca_pem=CA.cert_pem, token="tok", user="alice", addresses=["10.0.0.1:6000"]
    )
    assert credstore.directory() == home / "credentials"
    f = home / "credentials" / f"{cid}.json"
    assert mode(home / "credentials") == 0o700 and mode(f) == 0o600
    assert json.loads(f.read_text())["user"] == "alice"
    loaded = credstore.load(cid)
    assert loaded == saved
    assert loaded is not None and loaded.addresses == ("10.0.0.1:6000",)
    assert loaded.ca.cluster_id == cid and loaded.ca.key is None
    # Replacing: a CA-only entry (anonymous reads of a pinned cluster).
    credstore.save(cid, ca_pem=CA.cert_pem.decode())
    again = credstore.load(cid)
    assert again is not None and again.token is None and again.user is None
    credstore.save(OTHER.cluster_id, ca_pem=OTHER.cert_pem, token="t2")
    assert [c.cluster for c in credstore.all()] == sorted([cid, OTHER.cluster_id])
    assert credstore.remove(cid) and not credstore.remove(cid)
    assert credstore.load(cid) is None
    assert [c.cluster for c in credstore.all()] == [OTHER.cluster_id]


def test_save_refuses_inconsistent_input() -> None:
    with pytest.raises(UsageError, match="invalid cluster id"):
        credstore.save("../../etc/passwd", ca_pem=CA.cert_pem)
    with pytest.raises(UsageError, match=f"of cluster {CA.cluster_id}, not {OTHER.cluster_id}"):
        credstore.save(OTHER.cluster_id, ca_pem=CA.cert_pem)
    with pytest.raises(UsageError, match="corrupt certificate"):
        credstore.save(CA.cluster_id, ca_pem="garbage")


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[]",
        '{"cluster": "0000000000000000", "ca": "x"}',  # names another cluster
        None,  # replaced below by a document whose CA is of another cluster
        "BAD_CA",
        "BAD_ADDRS",
    ],
)
def test_corrupt_files_are_ignored(home: Path, content: str | None) -> None:
    cid = CA.cluster_id
    credstore.save(cid, ca_pem=CA.cert_pem, token="tok")
    f = home / "credentials" / f"{cid}.json"
    doc = json.loads(f.read_text())
    if content is None:
        doc["ca"] = OTHER.cert_pem.decode()
        content = json.dumps(doc)
    elif content == "BAD_CA":
        doc["ca"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        content = json.dumps(doc)
    elif content == "BAD_ADDRS":
        doc["addresses"] = [1, 2]
        content = json.dumps(doc)
    f.write_text(content)
    assert credstore.load(cid) is None
    assert credstore.all() == []


def test_bad_ids_are_never_found() -> None:
    assert credstore.load("../x") is None
    assert credstore.remove("../x") is False
