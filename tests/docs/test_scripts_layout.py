"""scripts/ holds the tools a user runs; scripts/studies/ the records, each saying what it is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
SCRIPTS = ROOT / "scripts"
STUDIES = SCRIPTS / "studies"
TOOLS = {"setup.sh", "gpu_check.sh", "mutants.py", "bench_summary.py"}
HELPERS = {"seed_study.py"}  # shared by the study scripts; answers no question itself
SCRIPT_PATH = re.compile(r"scripts/[\w/.-]+?\.(?:py|sh)\b")


def study_scripts() -> list[Path]:
    """The study scripts (Python and shell) in scripts/studies."""
    return sorted(p for p in STUDIES.iterdir() if p.suffix in (".py", ".sh"))


def opening(path: Path) -> str:
    """The opening docstring of a Python script, or the leading comment block of a shell one."""
    text = path.read_text()
    if path.suffix == ".py":
        match = re.match(r'"""(.*?)"""', text, re.S)
        assert match, f"{path.name} opens with no docstring"
        return match.group(1)
    lines = text.splitlines()[1:]  # past the shebang
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(line.lstrip("# "))
    return "\n".join(block)


def test_scripts_holds_only_the_tools_and_the_studies_folder():
    names = {p.name for p in SCRIPTS.iterdir() if p.name != "__pycache__"}
    assert names == TOOLS | {"studies"}, names - TOOLS


def test_every_study_script_says_its_question_results_page_and_command():
    scripts = study_scripts()
    assert len(scripts) >= 15
    for path in scripts:
        if path.name in HELPERS:
            continue
        head = opening(path)
        first = head.strip().splitlines()[0]
        assert first.endswith("?") or "?" in head.split("\n\n")[0], (path.name, first)
        pages = re.findall(r"Results: (docs/[\w/.-]+\.md)", head)
        assert pages, f"{path.name}: no 'Results: docs/<page>.md'"
        assert all((ROOT / page).is_file() for page in pages), (path.name, pages)
        assert f"scripts/studies/{path.name}" in head, f"{path.name}: no rerun command"


def test_the_studies_readme_lists_every_study_script():
    readme = (STUDIES / "README.md").read_text()
    listed = set(re.findall(r"^\| `([\w.]+)` \|", readme, re.M))
    assert listed == {p.name for p in study_scripts()}


def test_every_script_path_the_project_names_exists():
    texts = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / ".ci/run"]
    for folder, pattern in (("docs", "*.md"), ("src", "*.py"), ("tests", "*.py")):
        texts += (ROOT / folder).rglob(pattern)
    texts += (p for p in SCRIPTS.rglob("*") if p.suffix in (".py", ".sh", ".md"))
    for text in texts:
        for named in SCRIPT_PATH.findall(text.read_text()):
            assert (ROOT / named).is_file(), (text.relative_to(ROOT), named)
