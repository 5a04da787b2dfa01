# The two commands: `make train` (set up + the main job) and `make test` (set up + all tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/fashion_mnist_cnn
PYTEST_WORKERS ?= 2

.PHONY: setup jemalloc kernels train test test-slow lint format data bench bench-e2e finetune clean

setup: $(STAMP) kernels

# Reinstalled only when pyproject.toml changes; a no-op (about a second) otherwise.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,sweep,explain,lint]'
	-$(MAKE) -s jemalloc
	touch $(STAMP)

# Optional and best effort: jaxmodels uses jemalloc when present (README: allocator).
jemalloc:
	@if $(PY) -c "import sys; from jaxmodels import _env; sys.exit(_env.find_jemalloc() is None)"; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q libjemalloc2 >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libjemalloc2 >/dev/null 2>&1)) || \
	  echo "jemalloc not installed (optional)"; \
	else echo "jemalloc not found; optional (Debian: apt-get install libjemalloc2)"; fi

# Optional and best effort: the oneDNN kernels (README: oneDNN kernels), rebuilt when
# their sources change. Without a compiler or oneDNN it prints why once and the models keep XLA.
KERNELS := jaxmodels/kernels/onednn/_build/libjaxmodels_onednn.so
kernels: $(KERNELS)
$(KERNELS): $(wildcard jaxmodels/kernels/onednn/*.cc jaxmodels/kernels/onednn/*.h) \
    jaxmodels/kernels/onednn/build.py $(STAMP)
	-@$(PY) -m jaxmodels.kernels.onednn.build

# Every dataset that can be had offline, as the package's specs say (cifar10 needs the internet
# or --manual_dir).
data: setup
	$(PY) -m jaxmodels.data.prepare offline

train: setup
	$(PY) -m jaxmodels.data.prepare fashion_mnist
	$(PY) -m experiments.fashion_mnist_cnn --workdir=$(WORKDIR)

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --timeout=900 --durations=15 -m "not slow" tests

test-slow: setup
	$(PY) -m pytest -q -m slow --timeout=3600 tests

# Formatting (pyink) and lint (ruff) of the Python sources; `make format` rewrites them.
lint: setup
	$(PY) -m pyink --check --quiet .
	$(PY) -m ruff check --quiet .

format: setup
	$(PY) -m pyink --quiet .
	$(PY) -m ruff check --quiet --fix .

# torch comes with the test extra (setup); the bench extra names the same release.
# The README's performance table, each ratio the median of 3 whole runs (~45 min on 2 cores);
# bench-e2e: the whole-run gpt_small comparison and DP-SGD (~20 min per round of gpt_small).
bench: setup
	$(PY) -m benchmarks.run --repeat=3 --only=gpt,resnet18,lstm,mlp,conv_devices,input_pipeline,compile_cache

bench-e2e: setup
	$(PY) -m benchmarks.run --only=gpt_small,dp --rounds=3

# experiments/finetune_resnet.py offline on real data: a ResNet-18 trained on MNIST, exported as a
# torchvision state dict, fine-tuned from that file on Fashion-MNIST, and the same run from scratch
# for as many steps. One host device: for this model 0.9 s/step against 3.5 over 2 host devices
# (measured on the shared 2-core machine).
FINETUNE_DIR ?= runs/finetune_offline
FINETUNE = JAXMODELS_HOST_DEVICES=1 $(PY) -m experiments.finetune_resnet --config.arch=resnet18 \
  --config.eval_every_steps=100000
finetune: setup
	$(PY) -m jaxmodels.data.prepare mnist
	$(PY) -m jaxmodels.data.prepare fashion_mnist
	$(FINETUNE) --workdir=$(FINETUNE_DIR)/mnist --config.dataset=mnist --config.init_from= \
	  --config.num_train_steps=200 --config.export_torchvision=$(FINETUNE_DIR)/mnist_resnet18.pth
	$(FINETUNE) --workdir=$(FINETUNE_DIR)/finetuned --config.dataset=fashion_mnist \
	  --config.init_from=$(FINETUNE_DIR)/mnist_resnet18.pth --config.num_train_steps=200
	$(FINETUNE) --workdir=$(FINETUNE_DIR)/scratch --config.dataset=fashion_mnist \
	  --config.init_from= --config.num_train_steps=200
	@$(PY) -c 'import json, sys; [print(f"{n}: test accuracy", json.load(open(f"{sys.argv[1]}/{n}/summary.json"))["test_accuracy"]) for n in ("mnist", "finetuned", "scratch")]' $(FINETUNE_DIR)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
