"""pneumo: chest X-ray pneumonia screening — data, training, evaluation and Grad-CAM explanations."""

__version__ = "0.1.0"

import os as _os

# TensorFlow leaves its oneDNN kernels off on x86 CPUs by default; they run our convolutions 2-3× faster.
# Set before anything imports TensorFlow; a user's own setting wins.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
