# Two commands matter: `make demo` and `make test`. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench lint clean-demo chaos chat

# Install pinned requirements into .venv (re-runs only when a requirements file changes), espeak-ng, and chromium
# (the headless browser test of the chat app).
setup: $(STAMP)
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing espeak-ng (speech synthesis for the synthetic speech data)"; \
	    (apt-get install -y -qq espeak-ng >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq espeak-ng)); \
	  else \
	    echo "hint: install espeak-ng (e.g. sudo apt-get install espeak-ng); the speech stages need it"; \
	  fi; }
	@fc-list 2>/dev/null | grep -qi liberation || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing fonts-dejavu-core fonts-liberation (scripts/make_ocr_lines.py renders OCR lines with them)"; \
	    (apt-get install -y -qq fonts-dejavu-core fonts-liberation >/dev/null 2>&1 || (apt-get update -qq && \
	     apt-get install -y -qq fonts-dejavu-core fonts-liberation)); \
	  else \
	    echo "hint: sudo apt-get install fonts-dejavu-core fonts-liberation (fonts for scripts/make_ocr_lines.py)"; \
	  fi; }
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (the headless browser check of the chat app)"; \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)); \
	  else \
	    echo "hint: install chromium (e.g. sudo apt-get install chromium); the chat app's browser test needs it"; \
	  fi; }

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
