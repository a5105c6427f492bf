"""The app the project's tests run (tests/conftest.py points `APP_PACKAGES` here): a copy of
what the tests need of the shipped example (a daily balance job, the `sync_customers` task,
their two endpoints and tables), so that editing `example_app/` can never break a test.

Its tables are the example's (`balance_snapshot`, `customer_summary`), and so are its
migrations (`migrations/001_initial.py`, a copy of the example app's).
"""
