# hyperpy: `make demo` sets up everything and runs the demo; `make test` runs all tests.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= /var/lib/hyperpy
export HYPERPY_ARTIFACTS := $(ARTIFACTS)
APT_PACKAGES := qemu-system-x86 linux-source-6.1 build-essential flex bison libelf-dev \
	libssl-dev bc dwarves cpio xz-utils kmod busybox-static python3 python3-venv iproute2 \
	containerd docker.io util-linux containernetworking-plugins \
	libvirt-daemon-system libvirt-clients libvirt-dev pkg-config python3-dev tini acl \
	openssh-server openssh-client podman netavark aardvark-dns

.PHONY: all deps kernel initrd artifacts demo test check test-vm test-e2e lint bench install clean

all: artifacts

$(VENV)/.stamp-apt:
	@missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $(APT_PACKAGES) 2>/dev/null \
		| awk '$$1 != "ii" {print $$2}'; for p in $(APT_PACKAGES); do \
		dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done | sort -u); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends $$missing; \
	fi
	@[ -d $(VENV) ] || $(PYTHON) -m venv $(VENV)
	@touch $@

$(VENV)/.stamp-pip: $(VENV)/.stamp-apt pyproject.toml hyperpy/launcher.py
	$(VENV)/bin/pip install -q -e '.[test]'
	$(PY) -m hyperpy.launcher $(VENV)/bin/hyperpy  # over pip's script: python -ES, no site
	@touch $@

deps: $(VENV)/.stamp-pip

kernel: deps
	$(PY) -m kernel.build --out $(ARTIFACTS)/vmlinux

initrd: deps
	$(PY) -m initrd.build --out $(ARTIFACTS)/initrd.img
	$(PY) -m initrd.build --bare --out $(ARTIFACTS)/initrd-bare.img

artifacts: kernel initrd

# The embedded default: a bundle made from Debian's busybox-static, run in its own VM.
DEMO_DIR ?= /tmp/hyperpy-demo
demo: artifacts
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(PY) -m hyperpy.bundle $(DEMO_DIR)/bundle sh -c 'echo "guest kernel: $$(uname -r) (host: $(shell uname -r))"; \
		echo "hello from inside the container: hostname=$$(hostname) pid=$$$$ uid=$$(id -u)"; ls /'
	$(VENV)/bin/hyperpy --root $(DEMO_DIR)/state run --bundle $(DEMO_DIR)/bundle demo-$$$$

lint: deps
	$(VENV)/bin/ruff check hyperpy agent kernel initrd tests
	$(VENV)/bin/ruff format --check hyperpy agent kernel initrd tests
	$(VENV)/bin/mypy hyperpy agent kernel initrd
	$(VENV)/bin/actionlint .github/workflows/*.yml

# `make test` is these three, in this order; public CI runs each as a job of its own.
check: lint
	$(VENV)/bin/pytest -v -rs tests/unit

test-vm: artifacts
	$(VENV)/bin/pytest -v -rs tests/vm

test-e2e: artifacts
	$(VENV)/bin/pytest -v -rs tests/e2e

test: check test-vm test-e2e

bench: artifacts
	$(PY) -m tests.bench

install: deps
	ln -sf $(CURDIR)/$(VENV)/bin/hyperpy /usr/local/bin/hyperpy

clean:
	rm -rf $(VENV) *.egg-info
