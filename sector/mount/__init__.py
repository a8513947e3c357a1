"""The FUSE mount: Sector's namespace as a local file system (``sector mount``).

    policy.py   pure: what an open may do, which errno a failure is, what stat(2) and
                statfs(2) show, where a path is mounted (unit-tested without FUSE)
    blocks.py   pure: block arithmetic, sequential readahead, the LRU of cached blocks
    cache.py    the local block cache on disk: fetches ranges, dedupes, prefetches
    spool.py    files being written: local spool files put into Sector on close
    remote.py   the calls to the cluster, each bounded by a timeout (the read seam a
                swarm of readers can take over)
    core.py     the file system's operations over the client (no FUSE in it)
    fuseops.py  the thin mfusepy ``Operations`` class over ``core``
    daemon.py   mount in the foreground, start in the background, unmount

Sector's files are write-once, so the mount is built on that model rather than
pretending to be POSIX: a file is read lazily in blocks keyed by its blob id (a new
version is a new blob, so a cached block is never stale and the kernel may keep its
pages), and a file is written by writing a new one, spooled locally and put into
Sector atomically when it is closed. Changing an existing file in place is refused
with EPERM and a logged reason, never half done.
"""
