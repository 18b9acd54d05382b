"""Hyperparameter sweeps on Ray Tune: search space, ASHA, one TorchTrainer per trial, restore."""
