"""A job's required files in an engine (``sphere.required``) and the node's check of
their names (``node.sphere_files.check``; issue 14)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sector.errors import BadRequest
from sector.node.sphere_files import check
from sector.sphere import required
from sector.sphere.wire import Required

BLOB = "0" * 32


def _job(root: Path, name: str, version: str) -> dict[str, object]:
    d = root / name / "files"
    d.mkdir(parents=True)
    (d / "reqmod_x.py").write_text(f"VERSION = {version!r}\n")
    (d / "data.txt").write_text(version)
    return {
        "files_dir": str(d),
        "required": {"/lib/reqmod_x.py": "reqmod_x.py", "/d.txt": "data.txt"},
    }


def test_each_job_sees_its_own_files_and_modules(tmp_path: Path) -> None:
    here = os.getcwd()
    a, b = _job(tmp_path, "a", "v1"), _job(tmp_path, "b", "v2")
    try:
        with required.use(a) as got:
            import reqmod_x  # type: ignore[import-not-found]

            assert reqmod_x.VERSION == "v1" and Path("data.txt").read_text() == "v1"
            assert got["/d.txt"] == f"{a['files_dir']}/data.txt"
        assert os.getcwd() == here
        with required.use(a):  # the same job: its module stays imported
            assert sys.modules["reqmod_x"] is reqmod_x
        with required.use(b):  # another job: its own version
            import reqmod_x as again  # type: ignore[import-not-found]

            assert again.VERSION == "v2" and Path("data.txt").read_text() == "v2"
            assert str(a["files_dir"]) not in sys.path
        with required.use({}) as none:  # a job without: nothing of the last one's
            assert none == {} and "reqmod_x" not in sys.modules
            assert str(b["files_dir"]) not in sys.path
    finally:
        with required.use({}):
            pass
        os.chdir(here)


def test_the_node_refuses_names_that_leave_the_job_directory() -> None:
    ok = [Required(path="/p", name="p", dir=True), Required(path="/p/x", name="p/x", blob=BLOB)]
    assert check(ok) == {"/p": "p", "/p/x": "p/x"}
    for bad, why in [
        ([Required(path="/x", name="../x", blob=BLOB)], "clean relative"),
        ([Required(path="/x", name="/etc/x", blob=BLOB)], "clean relative"),
        ([Required(path="/x", name="a//x", blob=BLOB)], "clean relative"),
        ([Required(path="/x", name="a/x", blob=BLOB)], "directory is not listed"),
        ([Required(path="/x", name="x", blob=BLOB)] * 2, "two required files"),
        ([Required(path="/x", name="x", blob="../../etc")], "blob"),
    ]:
        with pytest.raises(BadRequest, match=why):
            check(bad)
