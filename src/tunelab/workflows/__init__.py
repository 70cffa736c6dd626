"""End-to-end workflows, one plain function each: train a run, evaluate it, predict with it."""
