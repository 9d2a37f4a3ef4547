# The two set-up commands: `make demo` (the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

DATA ?= data/demo
CATEGORY ?= brick
RUN ?= runs/demo
REPO ?= model_repository
BACKBONE ?= efficientnet_lite0
IMAGE_SIZE ?= 256
EPOCHS ?= 40
SEED ?= 0
BENCH_REPO ?= runs/compare/model_repository
PEERS_VENV ?= .venv-peers
DEPLOY_OUT ?= deploy/out
# Optional sizing for `make deploy`: kd-bench's JSON, the line's images/s and p99 budget (ms).
BENCH_JSON ?=
LINE_RATE ?=
LATENCY_BUDGET_MS ?=

.PHONY: install data train export serve stop validate demo score compare compare-signal highres console deploy browser bench bench-client bench-metrics bench-faults bench-quality peers-venv test clean help

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its pinned dependencies

data: install  ## write the demo dataset (MVTec AD layout) from scikit-image's photos
	$(VENV)/bin/kd-demo-data --root $(DATA) --category $(CATEGORY) --seed $(SEED)

train: data  ## train RD4AD on the demo data; writes weights + stats JSON to $(RUN)
	$(VENV)/bin/kd-train --data-root $(DATA) --category $(CATEGORY) --output $(RUN) \
		--backbone $(BACKBONE) --image-size $(IMAGE_SIZE) --epochs $(EPOCHS) --seed $(SEED)

export: install  ## export $(RUN) into the Triton model repository $(REPO)
	$(VENV)/bin/kd-export --run $(RUN)=ad_inference --repository $(REPO)

serve: install  ## start the embedded Triton server on $(REPO) (127.0.0.1:8000/8001/8002)
	./triton_startup_script.sh start --mode embedded --model-repository $(REPO)

stop:  ## stop the server started by `make serve`
	./triton_startup_script.sh stop

validate: install  ## validate the served models end to end
	$(PY) client/client.py --repository $(REPO)

demo: train export  ## the main job: data, training, export, server, client PASS, server stopped
	@./triton_startup_script.sh start --mode embedded --model-repository $(REPO) && \
	rc=0; $(PY) client/client.py --repository $(REPO) || rc=$$?; \
	./triton_startup_script.sh stop; exit $$rc

score: install  ## score the demo test images on the served model: CSV/JSONL, heatmaps, served metrics vs the stats JSON
	@./triton_startup_script.sh start --mode embedded --model-repository $(REPO) && \
	rc=0; $(PY) client/client.py score --evaluate $(DATA)/$(CATEGORY) --repository $(REPO) --output scores \
		--heatmaps scores/heatmaps --server-pid "$$(cat .triton/server.pid)" || rc=$$?; \
	./triton_startup_script.sh stop; exit $$rc

bench: install  ## serving vs in-process ONNX Runtime for every detector of $(BENCH_REPO) (run make compare first)
	$(VENV)/bin/kd-bench --repository $(BENCH_REPO) --readme README.md

bench-client: install  ## time the client's paths (pixels, shared memory, encoded JPEG; gRPC and HTTP) on $(REPO)
	$(VENV)/bin/kd-bench-client --repository $(REPO) --images $(DATA)/$(CATEGORY)/test

bench-metrics: install  ## time pixel AUROC and AUPRO on an MVTec-sized synthetic test set
	$(VENV)/bin/kd-bench-metrics

bench-faults: install  ## crash, dead-stub and fuzz recovery times of the supervised server on $(REPO) (run make demo first)
	$(VENV)/bin/kd-bench-faults --repository $(REPO) --readme README.md

bench-quality: install  ## every image method and anomalib's PatchCore/PaDiM (own venv, .venv-peers) on the benchmark categories; table into README
	$(VENV)/bin/kd-bench-quality --peers patchcore padim --peer-venv $(PEERS_VENV) --readme README.md

peers-venv: install  ## create the anomalib yardstick's own venv ($(PEERS_VENV), pinned anomalib 2.7.0 stack, ~6 GB)
	$(PY) -m bench.peers.venv --venv $(PEERS_VENV)

compare: install  ## train every method on the demo data, serve them, print the comparison table (also into README)
	$(VENV)/bin/kd-compare --data-root $(DATA) --category $(CATEGORY) --epochs $(EPOCHS) --seed $(SEED)

compare-signal: install  ## the time-series family: teachers and students trained on synthetic ECG, served, compared (also into README)
	$(VENV)/bin/kd-compare-signal --data-root data/ecg --runs runs/ecg

highres: install  ## whole-image vs patch training on 1024 px frames with 20-60 px defects (also into README)
	$(VENV)/bin/kd-highres --denoising off --tap-memory off

console: install  ## the inspection console on 127.0.0.1:8501 over the server started by `make serve`
	$(VENV)/bin/kd-console --repository $(REPO)

deploy: install  ## write Kubernetes manifests for $(REPO) into $(DEPLOY_OUT) (Kustomize base + cpu/gpu overlays, HPA, KServe; deploy/README.md)
	$(VENV)/bin/kd-deploy --repository $(REPO) --output $(DEPLOY_OUT) \
		$(if $(BENCH_JSON),--bench $(BENCH_JSON)) $(if $(LINE_RATE),--line-rate $(LINE_RATE)) \
		$(if $(LATENCY_BUDGET_MS),--latency-budget-ms $(LATENCY_BUDGET_MS))

browser:  ## Debian's chromium + chromium-driver for the console's browser test (needs root or sudo, and apt)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	sudo=""; [ "$$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && sudo="sudo -n"; }; \
	if command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || [ -n "$$sudo" ]; }; then \
		echo "installing chromium and chromium-driver (apt) for the console's browser test ..."; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null || echo "could not install chromium: the browser test will be skipped"; \
	else echo "no apt-get with root here: the console's browser test will be skipped (it says why)"; fi

test: install browser  ## run the test suite (starts real tritonserver instances on free ports)
	$(PY) -m pytest

clean:  ## remove outputs (data, runs, exported models), keep .venv
	rm -rf $(DATA) $(RUN) .triton scores
	find $(REPO) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
