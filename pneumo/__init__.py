"""pneumo: chest X-ray pneumonia screening — data, training, evaluation and Grad-CAM explanations."""

from __future__ import annotations

import os as _os
import sys

__version__ = "0.1.0"

# Whether TensorFlow uses its oneDNN kernels by default depends on the build and the CPU; on this project's
# CPU machine turning them on made training 2-3× faster. Set before anything imports TensorFlow; a user's
# own setting wins.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# Level 3: TensorFlow's C++ start-up chatter ("failed call to cuInit" on every machine without a GPU)
# reads like a failure to a user; errors still reach Python as exceptions.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines (written before its log level applies) kept off stderr."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = _os.dup(2)
    try:
        with open(_os.devnull, "w") as null:
            _os.dup2(null.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)
