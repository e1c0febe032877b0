# ctmask: `make demo` and `make test` set everything up on a fresh machine (a local venv holding
# libtorch 2.11.0 from PyPI, then the release build) and run the demo or every test.
SHELL := /bin/bash
.DEFAULT_GOAL := build

TORCH_VERSION := 2.11.0
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.ctmask-libtorch-$(TORCH_VERSION)-cmake
# The minimal wheel set: torch without its 2.7 GB of nvidia-* dependencies, plus the two small
# CUDA runtime wheels libtorch_cpu.so needs to load (see shared/spec/libtorch.md).
WHEELS := torch==$(TORCH_VERSION) nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
# cmake builds CharLS (JPEG-LS decoding of DICOM); from PyPI too, so no system package is needed.
CMAKE_WHEEL := cmake==3.31.10
# The site-packages path differs with the Python minor version: find it, do not hard-code it.
LIBTORCH = $(firstword $(wildcard $(CURDIR)/$(VENV)/lib/python3*/site-packages/torch))
CARGO_ENV = LIBTORCH=$(LIBTORCH) PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
CARGO ?= cargo

.PHONY: venv build test demo lint fmt clean-venv test-tools build-tools

# The venv is (re)made only when it is missing or holds another torch version.
$(STAMP):
	@if [ -d "$(VENV)" ] && ! ls -d $(VENV)/lib/python3*/site-packages/torch-$(TORCH_VERSION).dist-info >/dev/null 2>&1; then \
		echo "libtorch venv has the wrong version: recreating $(VENV)"; rm -rf $(VENV); fi
	@if ! ls -d $(VENV)/lib/python3*/site-packages/torch-$(TORCH_VERSION).dist-info >/dev/null 2>&1; then \
		echo "installing libtorch $(TORCH_VERSION) from PyPI into $(VENV) (about 540 MB download)"; \
		$(PYTHON) -m venv $(VENV) && \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps $(WHEELS); fi
	@if ! $(VENV)/bin/cmake --version 2>/dev/null | grep -q "cmake version 3.31.10"; then \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check $(CMAKE_WHEEL); fi
	@touch $@

venv: $(STAMP)

# nasm lets libjpeg-turbo (built from source by turbojpeg-sys) use its SIMD kernels, which decode
# to the same pixels, only faster. Installed from Debian's package when missing and this runs as
# root; otherwise the build goes on without SIMD.
build-tools:
	@if ! command -v nasm >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing nasm for libjpeg-turbo's SIMD"; \
			(apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nasm >/dev/null) \
				|| echo "note: nasm could not be installed; libjpeg-turbo builds without SIMD"; \
		else echo "note: nasm not found; libjpeg-turbo builds without SIMD (slower JPEG decoding)"; fi; fi

build: $(STAMP) build-tools
	$(CARGO_ENV) $(CARGO) build --release

lint: $(STAMP) build-tools
	$(CARGO) fmt --check
	$(CARGO_ENV) $(CARGO) clippy --release --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

# tmux drives the dashboard's end-to-end test, dciodvfy (dicom3tools) checks the synthetic
# DICOM and ctmask's SEG/SR/SC, DCMTK (dcmdjpeg, storescu, echoscu, storescp) gives DCMTK's pixels
# of the JPEG DICOM fixtures and is the network peer of the DICOM receiver and forwarding tests,
# and /usr/bin/time measures the hostile-file tests' peak memory; installed from Debian's packages
# when missing and this runs as root (as CI does), otherwise those tests say they were skipped.
TEST_TOOLS := tmux:tmux dciodvfy:dicom3tools dcmdjpeg:dcmtk storescu:dcmtk /usr/bin/time:time
test-tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing for the end-to-end tests"; \
			apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else echo "note: not found:$$missing; the tests that need them will be skipped"; fi; fi

# Every test in the release profile (the same artifacts as the binary: torch-sys builds once).
test: $(STAMP) lint test-tools
	$(CARGO_ENV) $(CARGO) test --release

demo: build
	./target/release/ctmask demo --log warn

clean-venv:
	rm -rf $(VENV)
