"""
Build the sdist and the wheel the way the README says (``python -m build``), check
that the wheel holds every package file (Lua scripts, ``py.typed``, migrations,
commands, templates), install it into a throwaway virtualenv with its declared
dependencies (pinned by requirements.txt) and use it from outside the checkout:
import it, load its Lua scripts, run its migrations, find its commands.

Run by ``make wheel`` (and so by ``.ci/run``). Exits non-zero on the first problem.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cachepatterns_app"

SMOKE = """
import importlib.resources
import pathlib
import sys

import cachepatterns_app

where = pathlib.Path(cachepatterns_app.__file__).resolve()
assert sys.prefix in str(where), f"imported from {where}, not from the installed wheel"

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "cachepatterns_app"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}},
    USE_TZ=True,
)
django.setup()

from django.core.management import call_command, get_commands
from django.db import connection

from cachepatterns_app import CacheAsideManager, WriteThroughManager, cache_aside  # noqa: F401
from cachepatterns_app.store import SCRIPTS

lua = sorted(p.name for p in importlib.resources.files("cachepatterns_app").joinpath("lua").iterdir())
assert lua and set(SCRIPTS) == {name.removesuffix(".lua") for name in lua}, (lua, sorted(SCRIPTS))
assert importlib.resources.files("cachepatterns_app").joinpath("py.typed").is_file()
call_command("migrate", verbosity=0)
assert "cachepatterns_app_pendinginvalidation" in connection.introspection.table_names()
commands = {name for name, app in get_commands().items() if app == "cachepatterns_app"}
expected = {"stats", "invalidate", "warm", "flush", "dlq"}
assert {f"cachepatterns_{name}" for name in expected} <= commands, commands
package = importlib.resources.files("cachepatterns_app")
assert package.joinpath("templates/admin/cachepatterns_app/stats/page.html").is_file()
assert package.joinpath("static/cachepatterns_app/stats.js").is_file()
print(f"ok: {where.parent} ({len(lua)} Lua scripts, commands {', '.join(sorted(commands))})")
"""


def run(*args: str | Path, cwd: Path = ROOT) -> None:
    shown = ["<smoke test>" if a is SMOKE else str(a) for a in args]
    print("+", " ".join(shown), flush=True)
    subprocess.run([str(a) for a in args], cwd=cwd, check=True)


def expected_files() -> set[str]:
    """Return the package's files (relative to the repository) the wheel must hold."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"][PACKAGE]
    out = set()
    for path in (ROOT / PACKAGE).rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(ROOT / PACKAGE).as_posix()
        # "templates/**/*.html" must also match a template right under templates/.
        globs = [p for pattern in patterns for p in (pattern, pattern.replace("**/", ""))]
        if path.suffix == ".py" or any(fnmatch.fnmatch(relative, g) for g in globs):
            out.add(f"{PACKAGE}/{relative}")
    return out


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="cp-wheel-") as tmp:
        work = Path(tmp)
        dist = work / "dist"
        run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
        (wheel,) = dist.glob("cachepatterns-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
        missing = sorted(expected_files() - names)
        if missing:
            print(f"{wheel.name} lacks: {', '.join(missing)}", file=sys.stderr)
            return 1
        strays = sorted(n for n in names if not n.startswith((f"{PACKAGE}/", "cachepatterns-")))
        if strays:
            print(f"{wheel.name} holds files outside the package: {', '.join(strays)}", file=sys.stderr)
            return 1
        print(f"{wheel.name}: {len(names)} files, every package file present")

        venv = work / "venv"
        run(sys.executable, "-m", "venv", venv)
        python = venv / "bin" / "python"
        run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        # The wheel's own dependency list, at the pinned versions: what a user installs.
        run(python, "-m", "pip", "install", "--quiet", wheel, "-c", ROOT / "requirements.txt")
        # From an empty directory, so that the checkout cannot be what gets imported.
        run(python, "-c", SMOKE, cwd=work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
