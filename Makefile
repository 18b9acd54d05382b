# The two commands of the README: `make test` and `make run`.
# Both create .venv with the pinned dependency set on first use (pyproject.toml).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test run venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

run: $(STAMP)
	$(VENV)/bin/python sweeps/polymnist_fmean.py

clean-venv:
	rm -rf $(VENV)
