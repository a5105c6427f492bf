"""Development as a new user hits it (issue 16): `--dev` gives any command the configuration of
`run.py dev` (its secrets, its own database var/dev.db, its Stripe stand-in), and the jobs
commands say which mode they act in and filter by account."""

from __future__ import annotations

import time

from conftest import ROOT
from test_e2e import cli

from models.db import open_database
from models.installation import Installation, apply_state
from models.jobs import JobRun
from models.migrate import migrate


def _dev_folder(tmp_path, api_base: str | None) -> None:
    (tmp_path / "var").mkdir()
    lines = ["# written by the test, like run.py dev",
             "STRIPE_APP_SECRETS=absec_devtest", "STRIPE_SECRET_KEY_TEST=sk_test_devflag"]
    if api_base:
        lines.append(f"STRIPE_API_BASE={api_base}")
    (tmp_path / "var" / "dev.env").write_text("\n".join(lines) + "\n")


def test_dev_flag_gives_any_command_the_dev_configuration(tmp_path, localstripe):
    _dev_folder(tmp_path, localstripe)
    # the flag may stand before or after the command; the dev database is var/dev.db
    out = cli(tmp_path, "--dev", "migrate")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "var" / "dev.db").exists() and not (tmp_path / "var" / "app.db").exists()
    db = open_database(f"sqlite:///{tmp_path}/var/dev.db")
    migrate(db)
    try:
        apply_state("acct_devflag", "test", True, int(time.time()), "setup")
        # jobs run reaches the emulator named in dev.env with the dev key: a real Stripe call
        out = cli(tmp_path, "jobs", "run", "balance_snapshot", "--account", "acct_devflag",
                  "--test", "--dev")
        assert out.returncode == 0, out.stdout + out.stderr
        assert JobRun.get().outcome == "succeeded"
        out = cli(tmp_path, "jobs", "list", "--dev")
        assert "acct_devflag" in out.stdout
        # without the flag, the same command uses the real server's database, not dev's
        out = cli(tmp_path, "jobs", "list")
        assert out.returncode == 0 and "acct_devflag" not in out.stdout
        assert (tmp_path / "var" / "app.db").exists()
        # DATABASE_URL set in the environment wins over the dev database
        out = cli(tmp_path, "migrate", "--dev", DATABASE_URL=f"sqlite:///{tmp_path}/other.db")
        assert out.returncode == 0 and (tmp_path / "other.db").exists()
        # a "--dev" after "--" is an argument, not the flag
        out = cli(tmp_path, "jobs", "list", "--", "--dev")
        assert out.returncode == 2
    finally:
        db.close()


def test_dev_flag_without_a_usable_dev_env_says_why(tmp_path):
    out = cli(tmp_path, "jobs", "list", "--dev")
    assert out.returncode == 2 and "run `run.py dev` once first" in out.stderr
    _dev_folder(tmp_path, None)  # an older dev.env, without STRIPE_API_BASE
    out = cli(tmp_path, "jobs", "list", "--dev")
    assert out.returncode == 2 and "has no STRIPE_API_BASE" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "var" / "dev.env").write_text("STRIPE_API_BASE=http://127.0.0.1:9/\n")
    out = cli(tmp_path, "migrate", "--dev")  # the stand-in is down: a warning, not a failure
    assert out.returncode == 0 and "is `run.py dev` running?" in out.stderr


def test_jobs_list_by_account_and_pause_resume_say_the_mode(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    db = open_database(url)
    migrate(db)
    try:
        apply_state("acct_one", "live", True, int(time.time()), "setup")
        apply_state("acct_one", "test", True, int(time.time()), "setup")
        apply_state("acct_two", "test", True, int(time.time()), "setup")
        out = cli(ROOT, "jobs", "list", "--account", "acct_one", DATABASE_URL=url)
        rows = [line for line in out.stdout.splitlines() if line.startswith("balance_snapshot")]
        assert [r.split()[1:3] for r in rows] == [["live", "acct_one"], ["test", "acct_one"]]
        out = cli(ROOT, "jobs", "list", "--account", "acct_none", DATABASE_URL=url)
        assert "acct_none has no active installation" in out.stdout

        out = cli(ROOT, "jobs", "pause", "--account", "acct_one", DATABASE_URL=url)
        assert out.returncode == 0
        assert out.stdout.strip() == ("acct_one: jobs paused in live mode (the default; --test "
                                      "or --sandbox for the others)")
        paused = {(i.mode, i.jobs_paused) for i in Installation.select().where(
            Installation.account_id == "acct_one")}
        assert paused == {("live", True), ("test", False)}
        out = cli(ROOT, "jobs", "resume", "--account", "acct_one", "--live", DATABASE_URL=url)
        assert out.stdout.strip() == "acct_one: jobs resumed in live mode"
        out = cli(ROOT, "jobs", "pause", "--account", "acct_two", "--test", DATABASE_URL=url)
        assert out.stdout.strip() == "acct_two: jobs paused in test mode"
        out = cli(ROOT, "jobs", "pause", "--account", "acct_two", DATABASE_URL=url)
        assert out.returncode == 1
        assert out.stderr.strip() == ("no installation for acct_two in live mode (the default; "
                                      "--test or --sandbox for the others)")
        out = cli(ROOT, "jobs", "pause", "--account", "acct_two", "--live", "--test",
                  DATABASE_URL=url)
        assert out.returncode == 2 and "not allowed with argument" in out.stderr
        help_text = cli(ROOT, "jobs", "pause", "--help").stdout
        assert "--live" in help_text and "default: live" in help_text
    finally:
        db.close()


def test_every_readme_command_parses_as_written():
    """Each `.venv/bin/python run.py ...` line of the README's walkthroughs is a valid command
    (the e2e walkthrough runs them; this catches a renamed flag in the text)."""
    import os
    import shlex

    from cli.main import _take_dev_flag, build_parser

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")  # a command continued on the next line
    lines = [line.split("  #", 1)[0].strip() for line in text.splitlines()]
    commands = [line for line in lines if line.startswith(".venv/bin/python run.py")]
    assert len(commands) >= 10
    for line in commands:
        argv = shlex.split(line)[2:]
        _, argv = _take_dev_flag(argv)
        build_parser().parse_args(argv)  # exits (a failure) on an unknown command or flag
