"""pneumo: chest X-ray pneumonia screening — data, training, evaluation and Grad-CAM explanations."""

__version__ = "0.1.0"
