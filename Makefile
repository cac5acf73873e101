# `make book` and `make test` set everything up on a fresh machine (Python 3.11 and npm present).
# `make book PROFILE=paper` builds the book from stored runs (`make paper`, or an unpacked archive), training nothing.
# `make bench` adds the benchmark peers (norse, snntorch) and runs every comparison; BENCH_ARGS=--quick for a short run.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
PROFILE := book
JOBS := 2
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup book paper test bench clean
setup: $(VENV)/.installed book/_vendor/.fetched

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt -e . $(PIP_QUIET)
	$(PY) -m rnnnotes.native
	touch $@

book/_vendor/.fetched: book/fetch_assets.sh
	bash book/fetch_assets.sh book/_vendor
	touch $@

book: setup
	$(PY) -m rnnnotes book --profile $(PROFILE) --jobs $(JOBS) $(if $(filter paper,$(PROFILE)),--stored)

paper: setup
	$(PY) -m rnnnotes paper

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/pip install -q torch==2.13.0 norse==1.1.0 snntorch==1.0.0 $(PIP_QUIET)
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf book/_build book/notebooks results
