# Two commands on a fresh machine: `make run` (the app) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8501
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup run test test-fast lint bench browser pacs-deps db-deps pacs clean default-model

# Re-install whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium drives the browser tests (Playwright never downloads a browser here); poppler's
# pdftoppm renders the PDF reports the tests look at.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v pdftoppm >/dev/null 2>&1 || { \
	  echo "installing Debian packages chromium chromium-driver poppler-utils"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver poppler-utils >/dev/null; }

# Orthanc with its DICOMweb and Python plugins, from Debian's packages, for `make pacs` and the PACS tests (the
# packaged service is never started: pneumo runs Orthanc as its own process with its own configuration); dicom3tools'
# dciodvfy and dcmtk's dsrdump check the DICOM pneumo writes (tests/test_tid1500.py).
pacs-deps:
	@{ command -v Orthanc >/dev/null 2>&1 || test -x /usr/sbin/Orthanc; } && ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1 \
	  && ls /usr/share/orthanc/plugins/libOrthancPython.so* >/dev/null 2>&1 \
	  && command -v dciodvfy >/dev/null 2>&1 && command -v dsrdump >/dev/null 2>&1 || { \
	  echo "installing Debian packages orthanc orthanc-dicomweb orthanc-python dicom3tools dcmtk"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq orthanc orthanc-dicomweb orthanc-python dicom3tools dcmtk >/dev/null; }

# A local Orthanc on 127.0.0.1:$(PACS_PORT) (no authentication, loopback only, temporary storage) seeded with
# the sample films as DICOM studies; serves until Ctrl-C. Each study is screened (and its results stored) once no
# instance has arrived for $(PACS_STABLE_AGE) s, by Orthanc's Python plugin; PACS_ON_ARRIVAL=0 leaves that to
# `pacs screen`.
PACS_PORT ?= 8042
PACS_STABLE_AGE ?= 10
PACS_ON_ARRIVAL ?= 1
pacs: setup pacs-deps
	$(PY) -m pneumo.integrations.pacs_server --port $(PACS_PORT) --stable-age $(PACS_STABLE_AGE) \
	  $(if $(filter 0,$(PACS_ON_ARRIVAL)),--no-screen-on-arrival,)

# A local, single-user app: bound to this machine, with saving thresholds and training switched on.
run: setup
	PNEUMO_ALLOW_CHANGES=1 $(PY) -m streamlit run streamlit_app.py --server.port $(PORT) --server.address 127.0.0.1 \
	  --server.headless true

# The checks a team runs on every change, in seconds: lint, format, types and the layers contract.
LINTED := pneumo tests pages bench streamlit_app.py
lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The slowest tests are named at the end, so a suite that grows slower shows where.
test: setup browser pacs-deps db-deps lint
	$(PY) -m pytest -q -m "not bench" --durations=25

test-fast: setup
	$(PY) -m pytest -q -m "not browser and not slow and not bench"

# The library's figures (bench/results*.json), then the app's, measured in a real browser (artifacts/).
bench: setup browser
	$(PY) bench/run.py $(if $(QUICK),--quick,)
	$(PY) -m pytest -q -m bench tests/test_browser.py tests/test_requirements.py

clean:
	rm -rf $(VENV) .pytest_cache artifacts

# Rebuild the shipped model (about 80 min on 2 CPU cores): five fold networks over every training film
# (grouped by patient and duplicate group), a leave-population-out run (the NORMAL2-IM series held out),
# and their cross-fitted ensemble, its operating point chosen out of fold; then the framing sweep, the
# drift reference and the probability map (models/EXPERIMENTS.md). The 'frame' recipe: framing from 0.7x to 1.6x, aspect,
# translation and black borders on a share of films, beside the acquisition-shift changes.
TRAIN_DATA ?= ../shared/data/chest_xray/train
TARGET_RECALL ?= 0.97
EPOCHS     ?= 24
FOLDS      := 0 1 2 3 4
TRAIN      := $(PY) -m pneumo train --data $(TRAIN_DATA) --model shift_cnn --augmentation frame --epochs $(EPOCHS) \
              --target-recall $(TARGET_RECALL) --overwrite
default-model: setup
	for k in $(FOLDS); do $(TRAIN) --split fold --fold $$k --folds 5 --split-seed 0 --seed $$k --out runs/fold-$$k || exit 1; done
	$(TRAIN) --split family --seed 0 --out runs/pop-family
	$(PY) -m pneumo ensemble $(foreach k,$(FOLDS),runs/fold-$(k)) --population runs/pop-family \
	  --target-recall $(TARGET_RECALL) --out runs/ensemble --overwrite
	$(PY) -m pneumo drift-reference --model runs/ensemble
	$(PY) -m pneumo calibrate-probability --model runs/ensemble --record
	cp runs/ensemble/model.keras runs/ensemble/card.json runs/ensemble/oof_predictions.csv runs/ensemble/history.json \
	  runs/ensemble/ood.npz runs/ensemble/image_hashes.json runs/ensemble/drift_reference.npz \
	  runs/ensemble/model.onnx runs/ensemble/gradcam.onnx runs/ensemble/onnx_probe.json models/
	$(PY) -m pneumo docs
