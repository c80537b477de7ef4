# trafmetux: install, lint, test, run, bench. Every target is idempotent: a second run is quick.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.toml
DEB_PACKAGES := python3 python3-venv python3-dev gcc make libnetfilter-queue-dev \
	libnfnetlink-dev iptables nftables iproute2 ethtool socat procps systemd netsniff-ng
PYTEST_ARGS ?=

.PHONY: install deps venv lint test test-long run bench install-systemd clean

install: deps venv

# Debian packages: installed only when one is missing, so a second run changes nothing.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

# The editable install compiles these with mypyc (setup.py) next to their sources: rebuild when
# they change, or the stale compiled modules would run. TRAFMETUX_PURE=1 installs plain Python.
COMPILED := $(addprefix trafmetuxd/,packet.py rules.py collector.py meter.py nfbatch.py)

$(VENV)/.installed: pyproject.toml setup.py $(COMPILED)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

lint: install
	$(BIN)/ruff check trafmetuxd trafmetuxctl tests bench
	$(BIN)/ruff format --check trafmetuxd trafmetuxctl tests bench
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest -m "not long" $(PYTEST_ARGS)

test-long: install
	$(BIN)/python -m pytest -m long $(PYTEST_ARGS)

run: install
	$(BIN)/trafmetuxd --config $(CONFIG)

bench: install
	$(BIN)/python -m bench

# Install the unit, the system user and directories, and the example config (kept if present).
install-systemd: install
	install -D -m 0644 systemd/trafmetuxd.service /etc/systemd/system/trafmetuxd.service
	install -D -m 0644 systemd/trafmetux.sysusers.conf /usr/lib/sysusers.d/trafmetux.conf
	install -D -m 0644 systemd/trafmetux.tmpfiles.conf /usr/lib/tmpfiles.d/trafmetux.conf
	systemd-sysusers trafmetux.conf
	systemd-tmpfiles --create trafmetux.conf
	test -e /etc/trafmetux/trafmetux.toml || \
		install -D -m 0640 -g trafmetux config.example.toml /etc/trafmetux/trafmetux.toml
	ln -sf $(abspath $(BIN))/trafmetuxd /usr/local/bin/trafmetuxd
	ln -sf $(abspath $(BIN))/trafmetuxctl /usr/local/bin/trafmetuxctl
	systemctl daemon-reload

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build trafmetuxd/*.so
