# Two commands matter: `make demo` (a local cluster doing real work) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow check bench bench-terasort bench-swarm bench-wan clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sector.testing.demo

check: $(STAMP)
	$(BIN)/ruff check sector tests bench tools examples
	$(BIN)/ruff format --check sector tests bench tools examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python tools/layout.py sector

# The FUSE mount's tests need fusermount3 and libfuse 3 (Debian's fuse3; root installs it);
# the web page's tests a headless chromium and its driver (Debian's chromium, chromium-driver).
# The WAN rig's tests (tests/integration/test_wan.py, root) need iperf3 and ping, and
# build ../shared/wanem's emulator with cc; they skip, saying why, where it is missing.
# Tests are spread over 2 workers a module at a time (--dist loadscope): a module-scoped
# cluster then starts once, not once per worker (1,412 tests in 715 s here, against 853 s).
test: check
	command -v fusermount3 >/dev/null || (apt-get update -qq && apt-get install -y -qq fuse3)
	command -v chromedriver >/dev/null || (apt-get update -qq && \
		apt-get install -y -qq chromium chromium-driver)
	command -v iperf3 >/dev/null && command -v ping >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq iperf3 iputils-ping)
	$(BIN)/pytest -q -n 2 --dist loadscope -m "not slow" tests

# The long suites (the thrash test: SECTOR_THRASH_SECONDS, default 180; the partition
# test; the fuzz flood: SECTOR_FUZZ_FRAMES, default 10^6, ~3 min). Thrash and partition
# cut the network between namespaced hosts with nft: root, and nftables.
test-slow: $(STAMP)
	command -v nft >/dev/null || (apt-get update -qq && apt-get install -y -qq nftables)
	$(BIN)/pytest -q -s -m slow tests

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'  # the peers: Dask, PySpark, scikit-learn
	command -v etcd >/dev/null || (apt-get update -qq && apt-get install -y -qq etcd-server)
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/metadata.py
	$(BIN)/python bench/repair.py
	$(BIN)/python bench/tls.py
	$(BIN)/python bench/chord_sim.py
	$(BIN)/python bench/flood.py
	$(BIN)/python bench/kmeans.py
	$(BIN)/python bench/disco.py

# TeraSort against the disk's floor, numpy, GNU sort, Dask and PySpark (installs the
# peers first). ~35 minutes on 2 cores; 16G needs ~66 GB free (checked before it starts).
bench-terasort: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/terasort.py --sizes 1G,4G,16G

# Swarm distribution (issue 14): ten hosts (network namespaces, root) on 100 Mbit/s
# links want one file at once; Sector against nginx, aria2, libtorrent and a pipelined
# chain, and one host SIGKILLed halfway. Installs its peers (iperf3, nginx, aria2 and
# opentracker with apt-get, libtorrent with pip). ~10 minutes; the issue's whole range
# (1 MiB .. 1 GiB) with `bench/swarm.py --sizes all` takes about an hour.
bench-swarm: $(STAMP)
	$(BIN)/python bench/swarm.py --kill-half

# Long fat links (issue 15): get and put over an emulated 1 Gbit/s link, RTT 0..200 ms,
# loss 0..1 %, against iperf3 (root; ../shared/wanem). About 3 minutes per cell.
bench-wan: $(STAMP)
	command -v iperf3 >/dev/null && command -v ping >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq iperf3 iputils-ping)
	$(BIN)/python bench/wan.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
