"""A trained network and what it reads: architectures, loading and ONNX serving, the wrong-input check, Grad-CAM
explanations and one film's reading.
"""
