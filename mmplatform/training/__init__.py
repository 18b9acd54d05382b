"""One training of one model on Ray Train V2: worker loop, checkpoints, divergence guard."""
