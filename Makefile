# One-command set-up: every target creates .venv from the project's own files first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE = 1
export GX_ANALYTICS_ENABLED = false
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = 180
export DO_NOT_TRACK = 1

.PHONY: install browser demo test check bench quality clean

install: $(STAMP)

# pyproject.toml carries lower bounds and extras (pipeline, embed, test); constraints.txt the
# exact pins this set was tested with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

## The main job on the embedded default: local storage, local Dask cluster, CPU.
demo: $(STAMP)
	$(BIN)/aniso demo

## Chromium (Debian's package) for the report's headless-browser test (tests/test_report_browser.py):
## installed when missing and installable (root, apt-get); never fails the build (the test skips).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u 2>/dev/null)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	  && test -x $(CHROMIUM); } || echo "chromium not installed: the browser test will skip"

## The whole test suite (what CI runs), on two worker processes; installs Chromium first when it can.
test: $(STAMP) browser
	$(BIN)/python -m pytest -n 2

## The edit-test loop: everything but the end-to-end flow runs and the slow tests (about 2 minutes).
check: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not slow and not flow"

bench: $(STAMP)
	$(BIN)/python bench/moments.py
	$(BIN)/python bench/apply.py

quality: $(STAMP)
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) .aniso-demo
