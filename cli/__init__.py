"""The commands behind `run.py`, one module per command (or group): serve, migrate,
install_link, jobs, events, simulate, dev; each registers itself with `add_parser(sub)`.
`cli.main` parses and dispatches; `cli.offline` opens the object graph for the operator
commands that work on the database."""
