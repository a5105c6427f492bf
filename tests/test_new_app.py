"""`run.py new PATH` (cli/new.py): the app it writes passes its own tests at once, with the
command its README gives, and mypy strict with the command its README gives; a PATH that
cannot take an app is refused with exit 2 and nothing written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def new(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "new", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def readme_command(readme: str, label: str) -> list[str]:
    """The command in backticks on the README line starting with `label`."""
    line = next(x for x in readme.splitlines() if x.startswith(label))
    found = re.search(r"`([^`]+)`", line)
    assert found, line
    return shlex.split(found.group(1))


def without_app_setting() -> dict[str, str]:
    """This environment without `APP_PACKAGES` (the session sets it to the sample app): the
    scaffold's tests find their own package."""
    return {k: v for k, v in os.environ.items() if k != "APP_PACKAGES"}


def test_a_new_app_passes_its_own_tests_and_mypy_strict(tmp_path: Path) -> None:
    out = new("tmp/acme_app", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    app = tmp_path / "tmp" / "acme_app"
    assert sorted(str(p.relative_to(app)) for p in app.rglob("*") if p.is_file()) == [
        "README.md", "__init__.py", "migrations/001_initial.py", "mypy.ini", "notes.py",
        "tests/__init__.py", "tests/test_notes.py"]
    readme = (app / "README.md").read_text()
    assert len(readme.splitlines()) == 5
    assert f"APP_PACKAGES={app} " in readme and str(app) in out.stdout
    notes = (app / "notes.py").read_text()
    for declared in ("@endpoint(\"/api/acme_app/notes\"", "@on_event(", "@job(", "@task(",
                     "class Note(AccountModel)"):
        assert declared in notes
    assert "import acme_app" not in notes and "from jobs" not in notes  # the public module only

    # the README's test command, as written, from somewhere else: five tests, all passing
    test = subprocess.run(readme_command(readme, "Test it:"), cwd=str(tmp_path),
                          env=without_app_setting(), capture_output=True, text=True,
                          timeout=300)
    assert test.returncode == 0, test.stdout[-4000:] + test.stderr[-2000:]
    assert "5 passed" in test.stdout

    # the README's type-check command: mypy strict on everything written (tests, migration)
    check = subprocess.run(readme_command(readme, "Type-check it:"), cwd=str(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stdout[-4000:]
    assert "no issues found in 5 source files" in check.stdout


def test_the_app_the_template_declares_is_what_the_backend_loads(tmp_path: Path) -> None:
    """Its migration matches its table: makemigration, right after `new`, finds nothing."""
    assert new(str(tmp_path / "shop_notes")).returncode == 0
    out = subprocess.run(
        [sys.executable, "run.py", "--app", str(tmp_path / "shop_notes"), "makemigration",
         "probe"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**without_app_setting(), "DATABASE_URL": f"sqlite:///{tmp_path}/probe.db"})
    assert out.returncode == 0, out.stderr
    assert "shop_notes/001_initial" in out.stderr  # applied, after the project's
    assert sorted(os.listdir(tmp_path / "shop_notes" / "migrations")) == ["001_initial.py"]


@pytest.mark.parametrize("name, why", [
    ("Acme-App", "cannot name a Python package"),
    ("2fast", "cannot name a Python package"),
    ("AcmeApp", "cannot name a Python package"),  # a table prefix and a URL segment too
    ("json", "module of Python's own"),
])
def test_a_name_that_cannot_be_a_package_is_refused(tmp_path: Path, name: str,
                                                   why: str) -> None:
    out = new(str(tmp_path / name))
    assert out.returncode == 2 and why in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / name).exists()


def test_a_folder_in_use_is_refused_and_an_empty_one_taken(tmp_path: Path) -> None:
    used = tmp_path / "acme_app"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    out = new(str(used))
    assert out.returncode == 2 and "not empty" in out.stderr
    assert os.listdir(used) == ["keep.txt"]
    (tmp_path / "afile").write_text("x")
    out = new(str(tmp_path / "afile"))
    assert out.returncode == 2 and "not a folder" in out.stderr
    empty = tmp_path / "empty_app"
    empty.mkdir()
    assert new(str(empty)).returncode == 0
    assert (empty / "notes.py").is_file()


def test_the_docs_testing_example_passes_in_a_new_app(tmp_path: Path) -> None:
    """docs' "Testing your app" example (and its pinned clock), as a test of a new app."""
    doc = Path(ROOT, "docs", "apps.md").read_text()
    section = doc.split("## Testing your app", 1)[1].split("\n## ", 1)[0]
    example, pinned = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    assert new(str(tmp_path / "acme_app")).returncode == 0
    (tmp_path / "acme_app" / "tests" / "test_doc.py").write_text(
        "import pytest\nfrom datetime import UTC, datetime\n\n" + example + "\n\n" + pinned)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path / "acme_app" / "tests" / "test_doc.py")],
                         cwd=str(tmp_path), env=without_app_setting(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-4000:]
