"""The training loop (on accelerate), checkpoints with RNG state, precision selection."""
