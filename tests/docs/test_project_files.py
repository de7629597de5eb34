"""The front door: README within its limits, and the project files a user expects."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

import denoiserep

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def test_readme_is_a_short_reference():
    lines = README.splitlines()
    assert len(lines) <= 300
    assert not HASH.findall(README), HASH.findall(README)
    assert not DATE.findall(README), DATE.findall(README)
    head = "\n".join(lines[:120])
    for key in ("data.root", "model.checkpoint"):
        assert key in head, key  # "run it on your data and your checkpoint" comes early
    for command in ("classify", "reid", "detect", "segment", "bench"):
        assert f"denoiserep {command} " in head, command


def test_readme_setup_commands_are_what_ci_runs():
    assert "bash scripts/setup.sh && .venv/bin/denoiserep demo" in README
    assert ".venv/bin/python -m pytest -n 2 -q" in README
    ci = (ROOT / ".ci/run").read_text()
    assert "bash scripts/setup.sh" in ci and ".venv/bin/python -m pytest -n 2 -q" in ci


def test_records_carry_dates_only_under_docs_results():
    for page in (ROOT / "docs").rglob("*.md"):
        if "results" in page.relative_to(ROOT / "docs").parts:
            continue
        text = page.read_text()
        assert not DATE.findall(text), (page, DATE.findall(text))
        assert not HASH.findall(text), (page, HASH.findall(text))


def test_license_citation_changelog_and_version():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = pyproject["project"]["version"]
    assert denoiserep.__version__ == version
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert pyproject["project"]["license"]["text"] == "MIT"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == version and citation["license"] == "MIT"
    paper = citation["preferred-citation"]
    assert paper["title"] == "Denoising Model for Representation Learning"
    assert [a["family-names"] for a in paper["authors"]] == ["Xu", "Wang", "Huang", "Sang"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{version}]" in changelog


def test_docs_extra_and_ci_pins_name_the_same_packages():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    docs = {re.split(r"[<>=\[]", req)[0] for req in extra["optional-dependencies"]["docs"]}
    pins = {
        line.split("==")[0]
        for line in (ROOT / "requirements-ci.txt").read_text().splitlines()
        if "==" in line
    }
    assert docs and docs <= pins


def test_readme_links_point_at_files_that_exist():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_every_record_opens_with_question_command_date_machine():
    pages = [p for p in (ROOT / "docs/results").glob("*.md") if p.name != "index.md"]
    assert len(pages) >= 8
    for page in pages:
        head = page.read_text()[:2500]
        for field in ("**Question**", "**Command", "**Date", "**Machine**"):
            assert field in head, (page.name, field)
