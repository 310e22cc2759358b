"""The documentation: the MkDocs site under docs/ builds with `mkdocs build --strict` (a broken link between pages, a
link to a missing heading, or a page left out of the nav fails the build), and the README stays a front door: under
400 lines, every relative link pointing at a file that exists. Offline: the Material theme and the search plugin
build without the network."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 400
PAGES = ["index.html", "architecture/index.html", "guides/objectives/index.html", "guides/data-and-scaling/index.html",
         "guides/evaluation/index.html", "guides/reproducibility/index.html", "guides/hub/index.html",
         "guides/adding-an-objective/index.html", "guides/python-api/index.html", "reports/index.html",
         "reports/2026-12-01-simcse/index.html", "reports/2026-12-01-electra/index.html"]


def build_site(site_dir: Path, config_file: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess:
    pytest.importorskip("mkdocs", reason="the docs tools are not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the Material theme is not installed: pip install -e '.[docs]'")
    environment = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's banner about MkDocs 2.0, printed every build
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config_file),
                           "--site-dir", str(site_dir)], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=300)


def test_the_docs_build_strictly(tmp_path):
    built = build_site(tmp_path / "site")
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    for page in PAGES:
        assert (tmp_path / "site" / page).is_file(), f"the site has no {page}"
    assert (tmp_path / "site" / "report-cram-cpu.png").is_file()  # the evaluation guide's picture


def relative_links(markdown: str) -> list[str]:
    """Targets of the Markdown links and images that point inside the repository (code blocks left out)."""
    prose = re.sub(r"^(`{3,}).*?^\1", "", markdown, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    return [target for target in targets if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", target)]


def test_the_readme_is_a_front_door_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    lines = readme.count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/ (limit {README_MAX_LINES})"
    links = relative_links(readme)
    assert any(link.startswith("docs/") for link in links), "the README links to no page of docs/"
    broken = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_a_broken_link_or_a_page_missing_from_the_nav_fails_the_build(tmp_path):
    """The strict build is what catches them: a copy of the docs with one broken link, then one with a page that the
    nav does not list, each fails."""
    for breakage in ("broken link", "page not in nav"):
        copy = tmp_path / breakage.replace(" ", "-")
        shutil.copytree(ROOT / "docs", copy / "docs")
        shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
        if breakage == "broken link":
            page = copy / "docs" / "guides" / "objectives.md"
            page.write_text(page.read_text() + "\nSee [a page that is not there](no-such-page.md).\n")
        else:
            (copy / "docs" / "guides" / "orphan.md").write_text("# A page no one listed\n")
        built = build_site(copy / "site", copy / "mkdocs.yml")
        assert built.returncode != 0, f"{breakage}: mkdocs build --strict passed\n{built.stderr}"
        assert ("no-such-page.md" if breakage == "broken link" else "orphan.md") in built.stderr + built.stdout
