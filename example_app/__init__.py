"""The examples that ship with the backend, one module per feature, each read top to bottom as
one unit: its table (an `AccountModel`, so an uninstall deletes its rows), the queries on it
(plain functions, run in a database thread), the job or task that writes it, and the signed
endpoint that shows it to the extension.

- `balance_snapshot`: a daily job storing each account's balance; `POST /api/balance`.
- `sync_customers`: a resumable task counting each account's customers;
  `POST /api/tasks/sync_customers` starts it, `POST /api/customers/summary` shows its result.

Nothing imports this package by name: the loader walks it (`models/loader.py`,
`DEFAULT_PACKAGES`), like `jobs/` and `models/`. Its tables' migrations are the project's
(`models/migrations/`).
"""
