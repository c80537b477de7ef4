# trafmetux: install, lint, test, run, bench. Every target is idempotent: a second run is quick.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.toml
DEB_PACKAGES := python3 python3-venv python3-dev gcc make libnetfilter-queue-dev \
	libnfnetlink-dev iptables nftables iproute2 ethtool socat procps systemd netsniff-ng \
	debootstrap systemd-container
# Needed by the tests on this machine only (the dashboard in headless Chromium, the manual
# pages rendered by man and groff, the zsh completion checked by zsh, a PostgreSQL server
# the fleet store tests start themselves), not by the service: kept out of DEB_PACKAGES,
# which the system tests' boot root is built from.
TEST_DEB_PACKAGES := chromium groff-base man-db zsh postgresql
PYTEST_ARGS ?=
APT_GET ?= apt-get

.PHONY: install deps venv lint test test-long run bench man install-systemd \
	check-service-python clean

install: deps venv

# Debian packages: installed only when one is missing, so a second run changes nothing and
# needs neither apt nor the network. A package counts as present when dpkg says it is installed
# (held packages too). Without dpkg (not Debian) nothing is installed: the list is printed.
deps:
	@if ! command -v dpkg-query >/dev/null; then \
		echo "deps: no dpkg-query (not Debian): make sure the equivalents of these are installed:"; \
		echo "  $(DEB_PACKAGES) $(TEST_DEB_PACKAGES)"; exit 0; \
	fi; \
	missing=$$(for p in $(DEB_PACKAGES) $(TEST_DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q ' ok installed$$' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then \
			echo "deps: installing packages needs root: sudo make deps (or install them yourself)"; \
			exit 1; \
		fi; \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

# The editable install compiles these with mypyc (setup.py) next to their sources: rebuild when
# they change, or the stale compiled modules would run. TRAFMETUX_PURE=1 installs plain Python.
# The list is pyproject.toml's [tool.trafmetux] compiled, as for setup.py and the tests.
COMPILED := $(addprefix trafmetuxd/,$(addsuffix .py,$(shell $(PYTHON) -c 'import tomllib; \
	print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["trafmetux"]["compiled"])')))

$(VENV)/.installed: pyproject.toml setup.py $(COMPILED)
	@test -x $(BIN)/python || { $(PYTHON) -m venv $(VENV) && \
		$(BIN)/python -m pip install -q --upgrade pip; }
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

# Manual pages and shell completions, generated from the argparse parsers and docs/config.md
# (python -m trafmetuxd.docgen), laid out as below /usr/local/share. Only the stdlib and the
# source tree are needed: no virtualenv.
GENERATED := build/share
GENERATED_FILES := man/man1/trafmetuxctl.1 man/man5/trafmetux.toml.5 man/man8/trafmetuxd.8 \
	bash-completion/completions/trafmetuxctl zsh/site-functions/_trafmetuxctl
SHARE ?= /usr/local/share

man: $(GENERATED)/.generated

$(GENERATED)/.generated: $(wildcard trafmetuxd/*.py trafmetuxctl/*.py) docs/config.md
	PYTHONPATH=. $(PYTHON) -m trafmetuxd.docgen $(GENERATED) >/dev/null
	@touch $@

# The service runs from its own virtualenv in a system location, built from Debian's python3 and
# installed (not editable, compiled as `make install` compiles it) from this checkout. The unit's
# ProtectHome=yes hides /home, /root and /run/user and PrivateTmp=yes hides /tmp and /var/tmp: an
# interpreter or a checkout there (pyenv, a developer's venv) fails as the service with 203/EXEC.
SERVICE_PYTHON ?= /usr/bin/python3
SERVICE_PREFIX := /opt/trafmetux
SOURCES := pyproject.toml setup.py $(wildcard trafmetuxd/*.py trafmetuxctl/*.py)
HIDDEN_FROM_SERVICE := /home /root /run/user /tmp /var/tmp

# Refuse an interpreter the service could not run, before the service's files are installed.
check-service-python:
	@for path in "$(SERVICE_PYTHON)" "$$(readlink -f "$(SERVICE_PYTHON)")"; do \
		for hidden in $(HIDDEN_FROM_SERVICE); do case "$$path/" in "$$hidden"/*) \
			echo "install-systemd: the service's interpreter SERVICE_PYTHON=$(SERVICE_PYTHON)" \
				"lies under $$hidden ($$path), which the unit hides (ProtectHome=yes," \
				"PrivateTmp=yes): the service would fail with 203/EXEC. Use Debian's" \
				"/usr/bin/python3 (apt-get install python3 python3-venv)." >&2; exit 1;; \
		esac; done; \
	done; \
	$(SERVICE_PYTHON) -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "install-systemd: SERVICE_PYTHON=$(SERVICE_PYTHON) is not a Python 3.11 or newer" \
			"with the venv module (apt-get install python3 python3-venv)." >&2; exit 1; }

# A virtualenv made from another interpreter is made anew (--clear) from SERVICE_PYTHON.
$(SERVICE_PREFIX)/.installed: $(SOURCES) | check-service-python
	@test "$$(readlink -f $(SERVICE_PREFIX)/bin/python)" = "$$(readlink -f $(SERVICE_PYTHON))" || \
		$(SERVICE_PYTHON) -m venv --clear $(SERVICE_PREFIX)
	$(SERVICE_PREFIX)/bin/python -m pip install -q --upgrade pip
	$(SERVICE_PREFIX)/bin/python -m pip install -q .
	@touch $@

# Install the service's virtualenv, the unit, the system user and directories, the example
# config (kept if present), the manual pages and trafmetuxctl's bash and zsh completion.
install-systemd: deps check-service-python $(SERVICE_PREFIX)/.installed man
	install -D -m 0644 systemd/trafmetuxd.service /etc/systemd/system/trafmetuxd.service
	install -D -m 0644 systemd/trafmetux.sysusers.conf /usr/lib/sysusers.d/trafmetux.conf
	install -D -m 0644 systemd/trafmetux.tmpfiles.conf /usr/lib/tmpfiles.d/trafmetux.conf
	systemd-sysusers trafmetux.conf
	systemd-tmpfiles --create trafmetux.conf
	test -e /etc/trafmetux/trafmetux.toml || \
		install -D -m 0640 -g trafmetux config.example.toml /etc/trafmetux/trafmetux.toml
	ln -sfn $(SERVICE_PREFIX)/bin/trafmetuxd /usr/local/bin/trafmetuxd
	ln -sfn $(SERVICE_PREFIX)/bin/trafmetuxctl /usr/local/bin/trafmetuxctl
	for f in $(GENERATED_FILES); do install -D -m 0644 $(GENERATED)/$$f $(SHARE)/$$f || exit 1; done
	@# Only a running systemd (sd_booted) reloads; an image being built (chroot) has none yet.
	if test -d /run/systemd/system; then systemctl daemon-reload; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build trafmetuxd/*.so
