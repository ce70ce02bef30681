"""Publish a converted checkpoint directory to a Hub repo, with its model card, in one commit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import OutputError
from .fetch import hub_error, quiet_hub

CARD_NAME = "README.md"


@dataclass
class PushReport:
    repo_id: str
    revision: str | None  # branch pushed to (None: the default branch)
    create_pr: bool
    private: bool
    files: list[str]  # paths in the repo, README.md included
    bytes: int
    commit: str | None = None  # None on a dry run
    commit_url: str | None = None
    pr_url: str | None = None
    dry_run: bool = False
    card: str = field(default="", repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def upload_files(out: Path) -> list[str]:
    """What a push uploads from OUT: every file but a README (the generated card replaces it)."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.relative_to(out).as_posix() != CARD_NAME)


def write_card(out: Path, card: str) -> None:
    """OUT keeps the card it was published with, so what is local is byte for byte what is on the Hub."""
    (out / CARD_NAME).write_text(card, encoding="utf-8")


def push(
    out: str | Path,
    repo_id: str,
    *,
    card: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    quiet: bool = False,
) -> PushReport:
    """Upload OUT and ``card`` (as README.md) to ``repo_id`` in one commit.

    Creates the repo if needed (``private`` applies only then), the branch ``revision`` if needed, or
    opens a pull request with ``create_pr``. ``dry_run`` reports what would be uploaded and sends nothing.
    """
    out = Path(out)
    if revision and create_pr:
        raise OutputError("choose `push_revision=BRANCH` or `create_pr=True`, not both", file=repo_id)
    files = upload_files(out) if out.is_dir() else []
    size = sum((out / f).stat().st_size for f in files) + len(card.encode())
    report = PushReport(repo_id, revision, create_pr, private, files + [CARD_NAME], size, dry_run=dry_run, card=card)
    if dry_run:
        return report
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    write_card(out, card)
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(out / f)) for f in files]
    operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=str(out / CARD_NAME)))
    try:
        with quiet_hub(quiet):
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.create_commit(
                repo_id, operations, commit_message=commit_message or f"Upload {out.name} converted by woqconv",
                revision=revision, create_pr=create_pr,
            )
    except (HfHubHTTPError, httpx2.HTTPError, ConnectionError, ValueError) as e:
        raise hub_error(repo_id, e, source=False) from None
    report.commit, report.commit_url, report.pr_url = info.oid, info.commit_url, info.pr_url
    return report
