# The two set-up commands of the README: `make demo` and `make test`. Both create .venv when missing,
# and install Fashion-MNIST when it is missing (tools/get-data: the Debian package, or one line saying what to do).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modefuse-installed
TORCH := torch==2.13.0

.PHONY: demo test test-slow test-gpu test-no-data data bench venv clean reproduce-quick docs

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,flower,docs]'
	touch $(STAMP)

# Fashion-MNIST where modefuse looks for it; first, so that a machine that cannot get it fails in seconds.
data:
	@tools/get-data

demo: data $(STAMP)
	$(PY) -m modefuse.demo --out runs/demo

# pytest exits 5 when it ran no test: that is a failure here, not a pass. A test that needs the data
# fails when it is missing (tests/conftest.py); `make test-no-data` skips those tests instead.
test: data $(STAMP)
	$(VENV)/bin/lint-imports --no-cache  # the layers contract of pyproject.toml
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --quiet --strict  # the documentation site: a warning is an error
	$(PY) -m pytest -q; rc=$$?; [ $$rc -ne 5 ] || echo "no tests ran" >&2; [ $$rc -eq 0 ]

# The documentation site into runs/site (mkdocs.yml; warnings fail it). `make test` builds it too.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

test-no-data: $(STAMP)
	MODEFUSE_SKIP_DATA_TESTS=1 $(PY) -m pytest -q; rc=$$?; [ $$rc -ne 5 ] || echo "no tests ran" >&2; [ $$rc -eq 0 ]

test-slow: data $(STAMP)
	$(PY) -m pytest -q -m slow; rc=$$?; [ $$rc -ne 5 ] || echo "no tests ran" >&2; [ $$rc -eq 0 ]

# On a machine with a CUDA GPU: the same answers there as on the CPU (tests/test_gpu.py). Not part of `make test`.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu; rc=$$?; [ $$rc -ne 5 ] || echo "no tests ran" >&2; [ $$rc -eq 0 ]

bench: data $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/align_speed.py
	$(PY) benchmarks/fuse_speed.py
	$(PY) benchmarks/align_memory.py

clean:
	rm -rf runs .pytest_cache

# The papers' experiments at their quick presets (about 10 minutes each on 2 cores), into results/.
EXPERIMENTS := wb-mlp wb-hetero wb-cnn wb-rnn lmc-plane curves lmc-width vit-lmc fed-fusion
reproduce-quick: data $(STAMP)
	for e in $(EXPERIMENTS); do $(VENV)/bin/modefuse reproduce $$e --quick || exit 1; done
