# `make train`, `make test` and `make docs` install into ./.venv first, only when it is missing or older
# than requirements.txt / scripts/setup_venv.sh. Extra flags: make train ARGS="--seed 2".
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install train train-mappo test bench peer bots mutate docs clean

install: $(STAMP)

$(STAMP): requirements.txt scripts/setup_venv.sh
	bash scripts/setup_venv.sh
	touch $@

train: $(STAMP)
	$(PY) bidist_mappo.py $(ARGS)

train-mappo: $(STAMP)
	$(PY) mappo.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/throughput.py $(ARGS)

peer: $(STAMP)
	$(PY) -m pip install -r requirements-peer.txt

bots: $(STAMP)
	$(PY) -m pip install -r requirements-bots.txt

mutate: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-mutate.txt
	$(PY) scripts/mutate.py $(ARGS)

docs: $(STAMP)
	$(VENV)/bin/mkdocs serve $(ARGS)

clean:
	rm -rf $(VENV)
