"""How a command runs: engines, the memory budget, progress bars, resume records, and the
probe and plan that predict a run's cost."""
