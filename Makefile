# Two commands matter: `make demo` and `make test`. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench lint clean-demo chaos chat

# $(call apt_install,CHECK,PACKAGES,WHY): when the shell command CHECK fails, install Debian PACKAGES (as root, with
# one `apt-get update` retry), else print a hint. WHY must not contain a comma.
define apt_install
	@$(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(2) ($(3))"; \
	    (apt-get install -y -qq $(2) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $(2))); \
	  else \
	    echo "hint: sudo apt-get install $(2) ($(3))"; \
	  fi; }
endef

# Install pinned requirements into .venv (re-runs only when a requirements file changes) and the Debian packages:
# espeak-ng (synthetic speech), fonts (OCR lines), chromium (the chat app's headless browser test).
setup: $(STAMP)
	$(call apt_install,command -v espeak-ng,espeak-ng,speech synthesis for the synthetic speech data)
	$(call apt_install,fc-list | grep -qi liberation,fontconfig fonts-dejavu-core fonts-liberation,fonts for scripts/make_ocr_lines.py)
	$(call apt_install,command -v chromium,chromium,the headless browser check of the chat app)

$(STAMP): requirements.txt requirements-dev.txt requirements-app.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements-dev.txt -r requirements-app.txt
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/python scripts/demo.py

# The browser chat on the demo's export (make demo first); CHAT_ARGS="--port 8000" or "--model_dir DIR".
chat: setup
	@echo "omni chat: loading the model; open the local URL printed below (Ctrl-C stops the server)"
	$(BIN)/python app.py $(CHAT_ARGS)

# Fault injection on every stage script: SIGKILL in a step / an evaluation / a checkpoint write and at random moments,
# SIGTERM; each interrupted run must end bitwise identical to an uninterrupted one. CHAOS_ARGS="--stages text --kills 1"
chaos: setup
	$(BIN)/python scripts/chaos.py $(CHAOS_ARGS)

bench: setup
	$(BIN)/python scripts/bench.py
	$(BIN)/python scripts/bench.py --compare

lint: setup
	$(BIN)/ruff check .
