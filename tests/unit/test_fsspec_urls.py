"""``sector://`` URLs and the error mapping of the fsspec face (no cluster needed)."""

from __future__ import annotations

import errno

import fsspec
import pytest

from sector import errors
from sector.fsspec import SectorFileSystem, _oserror


@pytest.mark.parametrize(
    ("url", "path", "kwargs"),
    [
        ("sector:///data/x.csv", "/data/x.csv", {}),
        ("sector:///", "/", {}),
        ("sector://127.0.0.1:6000/data/", "/data", {"cluster": "127.0.0.1:6000"}),
        ("sector://node-1.example:7000//a//b", "/a/b", {"cluster": "node-1.example:7000"}),
        ("sector://[::1]:6000/a", "/a", {"cluster": "[::1]:6000"}),
        ("/plain/path/", "/plain/path", {}),
        ("relative/path", "/relative/path", {}),
    ],
)
def test_urls(url: str, path: str, kwargs: dict[str, str]) -> None:
    assert SectorFileSystem._strip_protocol(url) == path
    assert SectorFileSystem._get_kwargs_from_urls(url) == kwargs


@pytest.mark.parametrize("url", ["sector://data/x.csv", "sector://h:p/x", "sector://a:1:2/"])
def test_a_netloc_that_is_not_host_port_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="bad Sector URL"):
        SectorFileSystem._strip_protocol(url)
    with pytest.raises(ValueError, match="bad Sector URL"):
        fsspec.core.url_to_fs(url)


def test_unstrip_names_the_cluster_only_when_one_was_named() -> None:
    fs = SectorFileSystem(cluster="10.0.0.1:6000", skip_instance_cache=True)
    assert fs.unstrip_protocol("/a/b") == "sector://10.0.0.1:6000/a/b"
    anon = SectorFileSystem(skip_instance_cache=True)
    assert anon.unstrip_protocol("/a/b") == "sector:///a/b"


@pytest.mark.parametrize(
    ("exc", "builtin", "code"),
    [
        (errors.NotFound("no such file: /x"), FileNotFoundError, errno.ENOENT),
        (errors.AlreadyExists("/x already exists"), FileExistsError, errno.EEXIST),
        (errors.IsADirectory("/x is a directory"), IsADirectoryError, errno.EISDIR),
        (errors.NotADirectory("/x is a file"), NotADirectoryError, errno.ENOTDIR),
        (errors.DirectoryNotEmpty("not empty"), OSError, errno.ENOTEMPTY),
        (errors.PermissionDenied("bob cannot write /x"), PermissionError, errno.EACCES),
        (errors.NoSpace("no node can take it"), OSError, errno.ENOSPC),
        (errors.Timeout("no answer"), TimeoutError, errno.ETIMEDOUT),
        (errors.ReplicationError("1 of 3 replicas answered"), OSError, errno.EIO),
    ],
)
def test_sector_errors_become_builtin_ones(
    exc: errors.SectorError, builtin: type[OSError], code: int
) -> None:
    got = _oserror(exc)
    assert type(got) is builtin and got.errno == code and str(exc) in str(got)


def test_misuse_is_a_value_error() -> None:
    assert isinstance(_oserror(errors.InvalidPath("'..' in /a/../b")), ValueError)
    assert isinstance(_oserror(errors.ConnectError("refused")), ConnectionError)
