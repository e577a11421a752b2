# The two commands of the README. Both set everything up themselves (venvs keyed by the pin sets,
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

# The Meta-World tests run in the second venv (metaworld 3.1.1 pins mujoco 3.3.0; the main pins use 4.0); there an
# ARGS selection that matches none of them (pytest exit 5) is not a failure.
test:
	@venv=$$(bash scripts/setup_env.sh | tail -n 1) && $$venv/bin/python -m pytest tests -q -p no:cacheprovider $(ARGS)
	@mw=$$(bash scripts/setup_env.sh metaworld | tail -n 1) && { $$mw/bin/python -m pytest tests/test_metaworld.py -q \
	  -p no:cacheprovider $(ARGS) || [ $$? = 5 ]; }

bench:
	@venv=$$(bash scripts/setup_env.sh | tail -n 1) && for b in benchmarks/bench_*.py; do echo "== $$b"; $$venv/bin/python $$b; done
