"""Where the project's own files live, and the two classes every part of pneumo names the same way."""

from __future__ import annotations

from pathlib import Path

# The checkout (or installed tree) holding pneumo/, models/ and data/: pneumo/core/paths.py is two levels down.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = PROJECT_ROOT / "models"
DEFAULT_MODEL_PATH = DEFAULT_MODEL_DIR / "model.keras"
DATA_DIR = PROJECT_ROOT / "data"
SAMPLES_DIR = DATA_DIR / "samples"
RUNS_DIR = PROJECT_ROOT / "runs"

# Label 0 and label 1, as folders, cards, CSVs and reports spell them.
CLASS_NAMES = ("NORMAL", "PNEUMONIA")
