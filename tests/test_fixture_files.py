"""Each fixture directory holds exactly the files its producer wrote: the list in fixtures/README.md
("Files of each fixture"), which must name every directory, and manifest.json's `files` and `sha256` agree."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import FIXTURES

README = FIXTURES / "README.md"
SECTION = "## Files of each fixture"
HEADER = ["directory", "written by", "files"]


def readme_file_lists() -> dict[str, list[str]]:
    """The README table under SECTION: directory -> its file names, in the order written."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines.count(SECTION) == 1, f"{README}: expected one {SECTION!r} heading"
    start = lines.index(SECTION) + 1
    rows: list[list[str]] = []
    for line in lines[start:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert rows, f"{README}: no table under {SECTION!r}"
    assert rows[0] == HEADER, rows[0]
    assert set("".join(rows[1])) <= set("-: "), rows[1]  # the |---|---|---| line
    lists: dict[str, list[str]] = {}
    for cells in rows[2:]:
        assert len(cells) == len(HEADER), cells
        name, _, files = cells
        name = name.strip("`")
        assert name not in lists, f"{name} is listed twice"
        lists[name] = [f.strip().strip("`") for f in files.split(",") if f.strip()]
        assert lists[name], f"{name}: empty file list"
    return lists


def fixture_dirs() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != "__pycache__")


LISTS = readme_file_lists()
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def test_readme_lists_every_fixture_directory():
    dirs = set(fixture_dirs())
    assert sorted(dirs - set(LISTS)) == [], "fixture directories missing from the README file list"
    assert sorted(set(LISTS) - dirs) == [], "README lists directories that do not exist"


def test_readme_file_lists_have_no_duplicates():
    for name, files in LISTS.items():
        assert len(files) == len(set(files)), name


@pytest.mark.parametrize("name", sorted(LISTS))
def test_directory_holds_exactly_the_listed_files(name):
    d = FIXTURES / name
    assert d.is_dir(), d
    entries = sorted(p.name for p in d.iterdir())
    assert entries == sorted(LISTS[name])
    for p in d.iterdir():
        assert p.is_file() and not p.is_symlink(), p


def test_manifest_has_one_entry_per_directory():
    assert sorted(MANIFEST) == fixture_dirs()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_manifest_files_and_sha256_agree_with_the_directory(name):
    d = FIXTURES / name
    entry = MANIFEST[name]
    on_disk = {p.name: p.stat().st_size for p in d.iterdir() if p.is_file()}
    assert entry["files"] == on_disk
    assert sorted(entry["sha256"]) == sorted(on_disk)
    for f, digest in entry["sha256"].items():
        assert hashlib.sha256((d / f).read_bytes()).hexdigest() == digest, f"{name}/{f}"
