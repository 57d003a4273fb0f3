"""Settings of class visualization (torch-free, so the CLI can show them without torch).

See :mod:`captionlab.vision.class_viz` for what each does and how the defaults were chosen.
"""

CS231N_DEFAULTS = {
    "l2_reg": 1e-3,
    "learning_rate": 25.0,
    "num_iterations": 100,
    "blur_every": 10,
    "blur_sigma": 0.5,
    "max_jitter": 16,
    "init_std": 1.0,
}

# For the EfficientNet-Lite0 backbone (see the module docstring): cs231n's, but a start
# noise of half the scale, as the input scale is half SqueezeNet's.
DEFAULTS = {
    "l2_reg": 1e-3,
    "learning_rate": 25.0,
    "num_iterations": 100,
    "blur_every": 10,
    "blur_sigma": 0.5,
    "max_jitter": 16,
    "init_std": 0.5,
}
