"""The local blob inventory (issue 3, parts 2-3) and the collector's pure verdict."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sector.storage.blobs import BlobStore, checksum_of
from sector.storage.inventory import COLLECT, KEEP, UNSURE, Inventory, verdict

B1, B2, B3 = "a" * 32, "b" * 32, "c" * 32


def test_record_keeps_the_first_row_and_fills_a_missing_path(tmp_path: Path) -> None:
    inv = Inventory(str(tmp_path / "inv.sqlite3"))
    inv.record(B1, "", 10, "blake3:x", 1.0)
    inv.record(B1, "/f", 10, "blake3:x", 2.0)  # a retried chain write, now with a path
    inv.record(B1, "/g", 10, "blake3:x", 3.0)  # a known path is not replaced
    r = inv.get(B1)
    # The path and checksum of the first row stay; the time is the latest commit's.
    assert r is not None and (r.path, r.committed_at, r.checksum) == ("/f", 3.0, "blake3:x")
    assert len(inv) == 1
    inv.close()


def test_reconcile_keeps_a_row_recommitted_while_the_disk_was_listed(tmp_path: Path) -> None:
    """A stale row (its file gone), then a new copy of the same blob: recorded, listing
    taken, linked. The listing missed the file; the row must survive, or the linked
    file would be a blob of no known path, which the collector keeps for ever."""
    inv = Inventory(str(tmp_path / "inv.sqlite3"))
    inv.record(B1, "/f", 5, "blake3:x", 1.0)
    inv.record(B1, "/f", 5, "blake3:x", 9.0)  # the new copy's commit
    assert inv.reconcile({}, now=5.0) == (0, 0)  # listed at 5.0, before its link
    r = inv.get(B1)
    assert r is not None and r.path == "/f"


def test_reconcile_adopts_unknown_blobs_and_drops_rows_without_a_file(tmp_path: Path) -> None:
    inv = Inventory(str(tmp_path / "inv.sqlite3"))
    inv.record(B1, "/gone", 5, "blake3:x", 1.0)
    inv.record(B3, "/late", 5, "blake3:y", 9.0)  # committed after the listing
    assert inv.reconcile({B2: 7}, now=5.0) == (1, 1)
    assert inv.get(B1) is None
    adopted = inv.get(B2)
    assert adopted is not None and adopted.path == "" and adopted.checksum is None
    assert inv.get(B3) is not None
    inv.verified(B2, "blake3:z", 6.0)  # the first verification records the checksum
    r = inv.get(B2)
    assert r is not None and r.checksum == "blake3:z" and r.last_verified == 6.0
    assert [r.blob for r in inv.rows()] == [B2, B3]  # least recently verified first


def test_aliases_until_one_path_is_confirmed(tmp_path: Path) -> None:
    inv = Inventory(str(tmp_path / "inv.sqlite3"))
    assert not inv.add_alias(B1, "/x")  # no such blob
    inv.record(B1, "/a", 1, None, 1.0)
    assert inv.add_alias(B1, "/b")
    assert inv.paths(B1) == ["/a", "/b"]
    inv.confirm_path(B1, "/b")
    assert inv.paths(B1) == ["/b"]
    inv.remove(B1)
    assert inv.paths(B1) == [] and inv.get(B1) is None


def test_a_finished_rename_confirms_only_a_name_the_blob_already_has(tmp_path: Path) -> None:
    inv = Inventory(str(tmp_path / "inv.sqlite3"))
    assert not inv.confirm_alias(B1, "/a")  # no such blob
    inv.record(B1, "/a", 1, None, 1.0)
    assert not inv.confirm_alias(B1, "/elsewhere")  # never an alias: nothing changes
    assert inv.paths(B1) == ["/a"]
    assert inv.add_alias(B1, "/b") and inv.add_alias(B1, "/c")
    assert inv.confirm_alias(B1, "/c")
    assert inv.paths(B1) == ["/c"]
    assert inv.confirm_alias(B1, "/c")  # again: the same
    assert inv.paths(B1) == ["/c"]


def test_blob_store_records_commits_and_forgets_deletes(tmp_path: Path) -> None:
    inv = Inventory(str(tmp_path / "inv.sqlite3"))
    store = BlobStore(tmp_path, inventory=inv)
    w = store.writer(B1, 3, "/dir/f")
    w.write(b"abc")
    w.commit(checksum_of(b"abc"))
    store.committed(w)
    r = inv.get(B1)
    assert r is not None and (r.path, r.size, r.checksum) == ("/dir/f", 3, checksum_of(b"abc"))
    assert store.sizes() == {B1: 3}
    assert store.delete(B1)
    assert inv.get(B1) is None


def test_verdict() -> None:
    me, other = "01", "02"
    assert verdict("file", B1, [me, other], B1, me) == KEEP
    assert verdict("file", B1, [other], B1, me) == COLLECT  # trimmed or replaced here
    assert verdict("file", B2, [me], B1, me) == COLLECT  # overwritten
    assert verdict("gone", None, [], B1, me) == COLLECT  # deleted (or moved: an alias)
    assert verdict("dir", None, [], B1, me) == COLLECT
    assert verdict(None, None, [], B1, me) == UNSURE  # no record: maybe a shard filling


def test_a_delete_racing_a_commit_never_leaves_a_file_without_its_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector deletes a copy it judged unclaimed while a repair commits a new
    copy of the same blob. The commit records the row, then links the file; a delete
    in between took the row and freed the name, and the link then made a file no row
    names (seen in a thrash run: an orphan kept for ever). The store orders them."""
    inv = Inventory(str(tmp_path / "inv.sqlite3"))
    store = BlobStore(tmp_path, inventory=inv)

    def commit() -> None:
        w = store.writer(B1, 3, "/f")
        w.write(b"abc")
        w.commit(checksum_of(b"abc"))
        store.committed(w)

    commit()  # the copy the collector is about to delete
    linking = threading.Event()
    real_link = os.link

    def slow_link(*args: object, **kw: object) -> None:
        linking.set()
        time.sleep(0.3)  # the window between the row and the file, made wide
        real_link(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", slow_link)
    t = threading.Thread(target=commit)
    t.start()
    assert linking.wait(10)
    store.delete(B1)
    t.join(10)
    assert store.exists(B1) == (inv.get(B1) is not None)
