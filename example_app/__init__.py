"""The examples that ship with the backend, one module per feature, each read top to bottom as
one unit: its table (an `AccountModel`, so an uninstall deletes its rows), the queries on it
(plain functions, run in a database thread), the job or task that writes it, and the signed
endpoint that shows it to the extension.

- `balance_snapshot`: a daily job storing each account's balance; `POST /api/balance`.
- `sync_customers`: a resumable task counting each account's customers;
  `POST /api/tasks/sync_customers` starts it, `POST /api/customers/summary` shows its result.

It is an app like yours (docs/apps.md): it imports only `stripe_app_backend`, and it runs only
when no app is named (`APP_PACKAGES` unset, no `run.py --app`); with an app named, it is not
loaded and its endpoints answer 404. Its tables' migrations are its own (`migrations/`, applied
after the project's, with their own history): the project's 001 and 004 created the two tables
before the example became an app, and its 015 handed them over, rows and all.
"""
