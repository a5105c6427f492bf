"""Configuration: one declaration per variable, and everything derived from it (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from service.config import VARIABLES, Config, ConfigError, markdown_table, variables


def _readme_configuration_table() -> list[str]:
    """The table lines between the `## Configuration` heading and the next heading."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index("## Configuration") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("#"))
    return [line for line in lines[start:end] if line.startswith("|")]


def test_readme_table_is_what_the_declarations_render():
    assert _readme_configuration_table() == markdown_table().splitlines(), (
        "README.md's Configuration table differs from the declarations in service/config.py; "
        'paste the output of: python -c "from service.config import markdown_table; '
        'print(markdown_table())"'
    )


def test_every_variable_is_declared_once():
    names = [var.name for var in variables()]
    assert len(names) == len(set(names))
    assert [row.name for row in VARIABLES] == names
    assert {"STRIPE_WEBHOOK_SECRETS_LIVE", "STRIPE_WEBHOOK_SECRETS_TEST",
            "STRIPE_RATE_LIMIT_LIVE", "STRIPE_RATE_LIMIT_TEST"} <= set(names)


def test_help_lists_every_declared_variable_with_its_default():
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    result = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for row in VARIABLES:
        line = next((line for line in lines if line.split()[:1] == [row.name]), None)
        assert line is not None, f"{row.name} missing from run.py --help"
        assert line.endswith(f"{row.meaning} [{row.default}]")
        assert "`" not in line


def test_empty_environment_gives_the_defaults():
    config = Config.from_env({})
    assert config == Config()
    assert config == Config(
        host="127.0.0.1",
        port=8000,
        database_url="sqlite:///var/app.db",
        app_secrets=(),
        webhook_secrets={"live": (), "test": (), "sandbox": ()},
        secret_keys={"live": None, "test": None, "sandbox": None},
        api_base=None,
        app_id=None,
        install_redirect_uri="http://127.0.0.1:8000/callback/stripe",
        install_success_url=None,
        signature_tolerance=300,
        scheduler=True,
        max_body_size=1048576,
        shutdown_timeout=10.0,
        db_workers=4,
        job_concurrency=10,
        rate_limits={"live": 80.0, "test": 20.0, "sandbox": 20.0},
        replica_poll_seconds=30.0,
        log_format="text",
        log_level="info",
    )
    # Each declared default is what an empty variable gives (the redirect is derived).
    for var in variables():
        if var.name != "STRIPE_INSTALL_REDIRECT_URI":
            assert var.read({}) == var.read({var.name: "  "}) == var.default


def test_derived_redirect_and_disabled_features():
    config = Config.from_env({"HOST": "0.0.0.0", "PORT": "9000"})
    assert config.install_redirect_uri == "http://0.0.0.0:9000/callback/stripe"
    assert config.callback_path == "/callback/stripe" and not config.cookie_secure
    explicit = Config.from_env({"STRIPE_INSTALL_REDIRECT_URI": "https://example.com/cb"})
    assert explicit.callback_path == "/cb" and explicit.cookie_secure
    assert [line.split(" ")[0] for line in Config().disabled_features()] == [
        "STRIPE_APP_SECRETS", "STRIPE_WEBHOOK_SECRETS_LIVE", "STRIPE_SECRET_KEY_LIVE",
        "STRIPE_WEBHOOK_SECRETS_TEST", "STRIPE_SECRET_KEY_TEST", "STRIPE_SECRET_KEY_SANDBOX",
        "STRIPE_APP_ID", "OPERATOR_TOKEN", "CREDENTIALS_KEYS",
    ]
    public = Config.from_env({"PUBLIC_URL": "https://app.example.com/"})
    assert public.public_url == "https://app.example.com"  # an origin: the slash is dropped
    assert public.install_redirect_uri == "https://app.example.com/callback/stripe"


def test_values_are_parsed_per_mode():
    config = Config.from_env({
        "STRIPE_WEBHOOK_SECRETS_LIVE": " whsec_a , whsec_b ,",
        "STRIPE_SECRET_KEY_TEST": "rk_test_1",
        "STRIPE_RATE_LIMIT_LIVE": "99.5",
        "SCHEDULER": "OFF",
        "LOG_LEVEL": "Debug",
    })
    assert config.webhook_secrets == {"live": ("whsec_a", "whsec_b"), "test": (), "sandbox": ()}
    assert config.secret_keys == {"live": None, "test": "rk_test_1", "sandbox": None}
    assert config.rate_limits == {"live": 99.5, "test": 20.0, "sandbox": 20.0}
    assert config.scheduler is False and config.log_level == "debug"
    with pytest.raises(ConfigError, match="^STRIPE_RATE_LIMIT_TEST: must be between"):
        Config.from_env({"STRIPE_RATE_LIMIT_TEST": "99.5"})


SECRET = "hunter2secret"


@pytest.mark.parametrize("name,value,message", [
    ("PORT", "eighty", "PORT: must be a whole number, got 'eighty'"),
    ("PORT", "70000", "PORT: must be between 0 and 65535, got 70000"),
    ("SIGNATURE_TOLERANCE", "-5", "SIGNATURE_TOLERANCE: must be between 1 and 86400, got -5"),
    ("SHUTDOWN_TIMEOUT", "soon", "SHUTDOWN_TIMEOUT: must be a number, got 'soon'"),
    ("STRIPE_RATE_LIMIT_TEST", "26",
     "STRIPE_RATE_LIMIT_TEST: must be between 0.1 and 25.0, got 26.0"),
    ("SCHEDULER", "Maybe", "SCHEDULER: must be one of on, off, got 'maybe'"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT: must be one of text, json, got 'xml'"),
    ("STRIPE_API_BASE", "localhost:8420",
     "STRIPE_API_BASE: must be an http:// or https:// URL, got 'localhost:8420'"),
    ("INSTALL_SUCCESS_URL", "ftp://x", "INSTALL_SUCCESS_URL: must be an http:// or https:// URL"),
    ("STRIPE_APP_ID", "com example", "STRIPE_APP_ID: must look like com.example.app"),
    # Secrets (and a database URL, which may hold a password) are never echoed.
    ("DATABASE_URL", f"mysql://u:{SECRET}@h/db",
     "DATABASE_URL: must start with sqlite:// or postgresql://"),
    ("STRIPE_APP_SECRETS", f"sk_live_{SECRET}", "STRIPE_APP_SECRETS: each value must start "
     "with absec_ and contain only letters, digits and underscores"),
    ("STRIPE_WEBHOOK_SECRETS_TEST", f"whsec_ok1,{SECRET}", "STRIPE_WEBHOOK_SECRETS_TEST: each "
     "value must start with whsec_ and contain only letters, digits and underscores"),
    ("STRIPE_WEBHOOK_SECRETS_LIVE", f"whsec_{SECRET}!", "STRIPE_WEBHOOK_SECRETS_LIVE: each "
     "value must start with whsec_ and contain only letters, digits and underscores"),
    ("STRIPE_SECRET_KEY_LIVE", f"sk_test_{SECRET}", "STRIPE_SECRET_KEY_LIVE: each value must "
     "start with sk_live_ or rk_live_ and contain only letters, digits and underscores"),
    ("STRIPE_SECRET_KEY_TEST", f"sk_test_{SECRET},sk_test_2",
     "STRIPE_SECRET_KEY_TEST: takes one key, not a list"),
])
def test_malformed_value_names_the_variable_and_hides_secrets(name, value, message):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({name: value})
    text = str(caught.value)
    assert text.startswith(f"{name}: ")
    assert text.startswith(message)
    assert SECRET not in text


def test_public_url_is_the_base_of_the_redirect():
    assert Config.from_env({}).public_url == "http://127.0.0.1:8000"
    config = Config.from_env({"PUBLIC_URL": "https://app.example.com/"})
    assert config.public_url == "https://app.example.com"  # one form, without the last slash
    assert config.install_redirect_uri == "https://app.example.com/callback/stripe"
    assert config.cookie_secure
    explicit = Config.from_env({"PUBLIC_URL": "https://app.example.com",
                                "STRIPE_INSTALL_REDIRECT_URI": "https://other.example.com/cb"})
    assert explicit.install_redirect_uri == "https://other.example.com/cb"
    with pytest.raises(ConfigError, match="PUBLIC_URL"):
        Config.from_env({"PUBLIC_URL": "app.example.com"})


def test_an_unknown_variable_with_a_known_prefix_is_named_with_the_setting_meant():
    """A misspelt setting is read by nothing: `unknown_variables` finds it by the prefixes of
    the declared names, and the line names the setting meant (issue 24)."""
    from service.config import unknown_variables

    env = {"STRIPE_APP_SECRET": "absec_x", "STRIPE_WEBHOOK_SECRET_LIVE": "whsec_x",
           "STRIPE_SECRET_KEY": "sk_test_x", "TASK_CONCURENCY": "3", "SQLITE_FOO": "1",
           "HOME": "/root", "PATH": "/bin", "PORT": "8123", "STRIPE_APP_SECRETS": "absec_y"}
    assert unknown_variables(env) == ("SQLITE_FOO", "STRIPE_APP_SECRET", "STRIPE_SECRET_KEY",
                                      "STRIPE_WEBHOOK_SECRET_LIVE", "TASK_CONCURENCY")
    lines = dict(zip(unknown_variables(env), Config.from_env(env).ignored_variables(),
                     strict=True))
    assert lines["STRIPE_APP_SECRET"].endswith("did you mean STRIPE_APP_SECRETS?")
    assert lines["STRIPE_WEBHOOK_SECRET_LIVE"].endswith(
        "did you mean STRIPE_WEBHOOK_SECRETS_LIVE?")
    assert "STRIPE_SECRET_KEY_TEST or STRIPE_SECRET_KEY_LIVE" in lines["STRIPE_SECRET_KEY"]
    assert lines["TASK_CONCURENCY"].endswith("did you mean TASK_CONCURRENCY?")
    assert "SQLITE_SYNCHRONOUS" in lines["SQLITE_FOO"]
    assert all("ignored" in line and "absec_" not in line for line in lines.values())
    assert Config.from_env({"PORT": "8123"}).ignored_variables() == []
    # the configuration read is the same: the unknown names change nothing else
    assert Config.from_env(env) == Config.from_env({k: env[k] for k in (
        "HOME", "PATH", "PORT", "STRIPE_APP_SECRETS")})


@pytest.mark.gen_test(timeout=30)
async def test_the_server_warns_once_at_start_up_of_a_misspelt_setting(tmp_path, caplog):
    from conftest import base_env, running

    caplog.set_level("INFO", logger="app.server")
    async with running(base_env(tmp_path, STRIPE_APP_SECRET="absec_x" + "1" * 20)):
        pass
    warned = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING" and "STRIPE_APP_SECRET " in r.getMessage()]
    assert warned == ["STRIPE_APP_SECRET is set but is not a setting of this backend "
                      "(ignored); did you mean STRIPE_APP_SECRETS?"]


def test_the_sandbox_mode_has_its_own_key_and_secrets():
    """The managed sandbox's key is a test-mode key of its own, and no webhook secret or key
    serves two modes: an event's mode is the mode of the secret that verified it."""
    config = Config.from_env({"STRIPE_SECRET_KEY_SANDBOX": "sk_test_sbx",
                              "STRIPE_WEBHOOK_SECRETS_SANDBOX": "whsec_sbx",
                              "STRIPE_WEBHOOK_SECRETS_TEST": "whsec_tst"})
    assert config.secret_keys["sandbox"] == "sk_test_sbx"
    assert config.webhook_secrets["sandbox"] == ("whsec_sbx",) and config.sandbox_configured
    assert not Config().sandbox_configured
    assert not any(line.startswith("STRIPE_SECRET_KEY_SANDBOX")
                   for line in config.disabled_features())
    with pytest.raises(ConfigError, match="STRIPE_SECRET_KEY_SANDBOX: each value must start "
                                          "with sk_test_ or rk_test_"):
        Config.from_env({"STRIPE_SECRET_KEY_SANDBOX": "sk_live_x"})
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRETS_SANDBOX: a secret is also in "
                                          "STRIPE_WEBHOOK_SECRETS_TEST"):
        Config.from_env({"STRIPE_WEBHOOK_SECRETS_TEST": "whsec_a,whsec_same",
                         "STRIPE_WEBHOOK_SECRETS_SANDBOX": "whsec_same"})
    with pytest.raises(ConfigError, match="STRIPE_SECRET_KEY_SANDBOX is the same key as "
                                          "STRIPE_SECRET_KEY_TEST"):
        Config.from_env({"STRIPE_SECRET_KEY_TEST": "sk_test_1", "STRIPE_SECRET_KEY_SANDBOX":
                         "sk_test_1"})
