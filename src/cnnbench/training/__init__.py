"""Training: the data, the optimiser, the trainer, the runtime it needs, and the child
process each trial runs in. Imports nothing above it (no engine, no report)."""
