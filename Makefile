# The two commands of the README. Both set everything up themselves (venv keyed by the pin set,
# Mesa EGL/OSMesa if missing), then run the main job or the tests.
SHELL := /bin/bash
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
export OPENBLAS_NUM_THREADS ?= 2
OUT ?= outputs/demo

.PHONY: demo test setup bench

setup:
	@bash scripts/setup_env.sh

demo:
	@venv=$$(bash scripts/setup_env.sh | tail -n 1) && $$venv/bin/s2robot demo out=$(OUT) $(ARGS)

test:
	@venv=$$(bash scripts/setup_env.sh | tail -n 1) && $$venv/bin/python -m pytest tests -q -p no:cacheprovider $(ARGS)

bench:
	@venv=$$(bash scripts/setup_env.sh | tail -n 1) && for b in benchmarks/bench_*.py; do echo "== $$b"; $$venv/bin/python $$b; done
