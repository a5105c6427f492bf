"""The app the project's tests run (tests/conftest.py points `APP_PACKAGES` here): a copy of
what the tests need of the shipped example (a daily balance job, the `sync_customers` task,
their two endpoints and tables), so that editing `example_app/` can never break a test.

Its tables are the ones the project's frozen migrations created for the example
(`balancesnapshot`, `customersummary`), so it needs no migrations of its own.
"""
