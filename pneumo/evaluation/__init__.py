"""What is known of a model: metrics at a threshold, shift and framing checks, drift, site operating points, external
evaluations, the label audit.
"""
