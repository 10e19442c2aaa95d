"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s types``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "types", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, the npm reference clients included."""
    session.install("-e", ".[test]")
    with session.chdir("tests/js"):
        session.run("npm", "ci", "--no-audit", "--no-fund", external=True)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, the tests and the benchmarks."""
    session.install("ruff")
    session.run("ruff", "check", "liveloop", "tests", "benchmarks", "noxfile.py")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict over the package, the tests, the benchmarks and this file."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "liveloop", "tests", "benchmarks", "noxfile.py")
