# vidiff developer tasks. `make test` is all a fresh machine needs.
PYTHON      ?= python3
VENV        ?= .venv
# torch from the configured index (PyPI: the CUDA build on Linux). CPU-only Linux: TORCH_INDEX="--index-url
# https://download.pytorch.org/whl/cpu"; CUDA: TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.vidiff-installed

.PHONY: venv test test-all test-browser browser-deps app bench clean demo quality

venv: $(STAMP)

# torch goes in first, so nothing pulls a multi-GB CUDA build as a dependency.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The first command to run: set-up, then a clip from the built-in demo cascade (vidiff/assets/demo), with a GIF
# and a contact sheet. tests/test_demo.py runs this recipe's `vidiff generate` line.
DEMO_OUT    ?= outputs/demo
demo: $(STAMP)
	$(VENV)/bin/vidiff generate --prompt "a red circle moving right" --seed 0 --gif --contact-sheet --quiet --overwrite --out $(DEMO_OUT)/clip.mp4
	@echo "demo: clip $(DEMO_OUT)/clip.mp4, GIF $(DEMO_OUT)/clip.gif, contact sheet $(DEMO_OUT)/clip.png"

# docs/quality.md's held-out figures: every `vidiff eval` measurement of the shipped demo models on the held-out
# seeds (9001, 9002; the full-schedule cascade on 9001; the default, fast cascade on both), JSON + markdown tables into $(QUALITY). ~15 minutes on 2 CPU cores.
QUALITY     ?= docs/quality
EVAL        := $(VENV)/bin/vidiff eval
DEMO        := vidiff/assets/demo
quality: $(STAMP)
	mkdir -p $(QUALITY)
	$(EVAL) shapes --model $(DEMO)/base --quiet --overwrite --out $(QUALITY)/base.json --contact-sheet $(QUALITY)/base.png > $(QUALITY)/base.md
	$(EVAL) stage --model $(DEMO)/interpolation --quiet --overwrite --out $(QUALITY)/interpolation.json > $(QUALITY)/interpolation.md
	$(EVAL) stage --model $(DEMO)/ssr --quiet --overwrite --out $(QUALITY)/ssr.json > $(QUALITY)/ssr.md
	$(EVAL) stage --stage extend --model $(DEMO)/extend --quiet --overwrite --out $(QUALITY)/extend.json > $(QUALITY)/extend.md
	$(EVAL) edit --model $(DEMO)/base --strength 0.95 --guidance 1.5 --quiet --overwrite --out $(QUALITY)/edit.json > $(QUALITY)/edit.md
	$(EVAL) shapes --cascade $(DEMO)/cascade-full.yaml --seeds 9001 --quiet --overwrite --out $(QUALITY)/cascade.json --contact-sheet $(QUALITY)/cascade.png > $(QUALITY)/cascade.md
	$(EVAL) shapes --model $(DEMO)/base-fast --quiet --overwrite --out $(QUALITY)/base-fast.json > $(QUALITY)/base-fast.md
	$(EVAL) shapes --cascade $(DEMO) --quiet --overwrite --out $(QUALITY)/cascade-fast.json --contact-sheet $(QUALITY)/cascade-fast.png > $(QUALITY)/cascade-fast.md
	@echo "quality: tables and JSON in $(QUALITY)/"

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP) browser-deps
	$(PY) -m pytest -q -m ""

# `vidiff app` on the built-in demo at http://127.0.0.1:7860 (outputs in outputs/app/)
app: $(STAMP)
	$(VENV)/bin/vidiff app

# The browser test's tools: Debian's chromium (apt-get; sudo when not root) and the playwright package, which drives
# /usr/bin/chromium (`playwright install` and its browser download are never used).
browser-deps: $(STAMP)
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium; }
	$(PY) -m pip install -q "playwright>=1.40"

# tests/test_app_browser.py alone (~35 s): headless Chromium drives `vidiff app`
test-browser: browser-deps
	$(PY) -m pytest -q -m browser tests/test_app_browser.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
