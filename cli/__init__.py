"""The commands behind `run.py`: one module per group (serve, jobs, events, simulate, dev)."""
