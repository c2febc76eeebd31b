# `make train`, `make test` and `make docs` install into ./.venv first, only when it is missing or older
# than requirements.txt / scripts/setup_venv.sh. Extra flags: make train ARGS="--seed 2".
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RAY    := $(VENV)/.ray-installed
ARGS   ?=

.PHONY: install ray train train-mappo test bench peer bots mutate docs clean

install: $(STAMP)

$(STAMP): requirements.txt scripts/setup_venv.sh
	bash scripts/setup_venv.sh
	touch $@

# Ray is optional for users (study.py --ray); the test suite needs it for tests/test_cluster.py
ray: $(RAY)

$(RAY): $(STAMP) requirements-ray.txt
	$(PY) -m pip install --quiet -r requirements-ray.txt
	touch $@

train: $(STAMP)
	$(PY) bidist_mappo.py $(ARGS)

train-mappo: $(STAMP)
	$(PY) mappo.py $(ARGS)

test: $(STAMP) $(RAY)
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
