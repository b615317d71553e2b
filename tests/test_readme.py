"""
The README's ``depends_on`` example is complete: its ``blog`` app (models, the
decorated query, the ``AppConfig`` that imports it), copied unchanged from
README.md into a fresh project, passes ``manage.py check`` with no message — and
the check does catch the mistake the example used to invite (a ``Post`` without
``InvalidatingManager``: W004).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from tests.support import readme_block


def write_blog_project(tmp_path: Path, models_source: str) -> Path:
    blog = tmp_path / "blog"
    blog.mkdir()
    (blog / "__init__.py").write_text("", encoding="utf-8")
    (blog / "models.py").write_text(models_source, encoding="utf-8")
    (blog / "queries.py").write_text(readme_block("# blog/queries.py"), encoding="utf-8")
    (blog / "apps.py").write_text(
        readme_block("# blog/apps.py: import the decorated functions in every process, at startup"),
        encoding="utf-8",
    )
    (tmp_path / "example_settings.py").write_text(
        "\n".join(
            [
                'SECRET_KEY = "readme-example"',
                "USE_TZ = True",
                'DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"',
                "INSTALLED_APPS = ['django.contrib.contenttypes', 'cachepatterns_app', "
                "'blog.apps.BlogConfig']",
                "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}}",
                "CACHES = {'default': {'BACKEND': 'django_redis.cache.RedisCache', "
                f"'LOCATION': {settings.REDIS_URL!r}, "
                "'OPTIONS': {'SOCKET_TIMEOUT': 5, 'SOCKET_CONNECT_TIMEOUT': 5}}}",
                "CACHEPATTERNS = {'KEY_PREFIX': 'cpt'}",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return tmp_path


def check(project: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "example_settings"}
    return subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_depends_on_example_passes_the_checks_as_written(tmp_path: Path) -> None:
    result = check(write_blog_project(tmp_path, readme_block("# blog/models.py")))
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_without_invalidating_manager_the_check_says_w004(tmp_path: Path) -> None:
    models_source = readme_block("# blog/models.py")
    assert "    objects = InvalidatingManager()\n" in models_source
    broken = models_source.replace("    objects = InvalidatingManager()\n", "")
    result = check(write_blog_project(tmp_path, broken))
    assert "cachepatterns.W004" in result.stderr, result.stdout + result.stderr
    assert "blog.Post" in result.stderr


def test_every_metric_is_explained_in_the_readme() -> None:
    from pathlib import Path

    from cachepatterns_app import stats

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The metrics", 1)[1].split("### Scraping it", 1)[0]
    missing = [
        name for name in [*stats.EVENTS, *stats.DURATIONS, *stats.GAUGES] if f"`{name}`" not in section
    ]
    assert missing == []
