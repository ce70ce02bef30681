"""``woqconv migrate``: convert a list of Hub repos, verify each, optionally publish; resumable.

Each line of the list is ``org/name`` or ``org/name@revision`` (``#`` starts a comment). Outputs go
to ``ROOT/<org>--<name>-<target>``. After each repo its outcome is written to
``ROOT/woqconv-migrate.json`` atomically (a temporary file renamed over the old one), so a killed run
loses at most the repo it was on, and a rerun skips every repo already finished. Refused and failed
repos are tried again on a rerun: a refusal can change with the options (``--allow-bf16``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import BadArgument, FormatError, OutputError, RefusedConversion, WoqconvError

STATE_FILE = "woqconv-migrate.json"
SUCCEEDED, REFUSED, FAILED = "succeeded", "refused", "failed"
_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(\S+))?$")


@dataclass
class MigrationEntry:
    repo_id: str
    revision: str | None
    status: str  # succeeded / refused / failed
    reason: str | None = None  # why refused or failed
    output: str | None = None
    commit: str | None = None  # source commit converted
    lossless: bool | None = None
    verified: bool | None = None  # None: verify not asked
    pushed_to: str | None = None
    push_url: str | None = None
    done_earlier: bool = False  # finished by an earlier run, skipped now

    @property
    def key(self) -> str:
        return entry_key(self.repo_id, self.revision)


@dataclass
class MigrationReport:
    target: str
    root: str
    entries: list[MigrationEntry] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return all(e.status == SUCCEEDED for e in self.entries)

    def counts(self) -> dict[str, int]:
        out = {SUCCEEDED: 0, REFUSED: 0, FAILED: 0}
        for e in self.entries:
            out[e.status] += 1
        return out

    def to_dict(self) -> dict:
        return {"target": self.target, "root": self.root, "counts": self.counts(), "entries": [asdict(e) for e in self.entries]}


def entry_key(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


def parse_list(path: str | os.PathLike) -> list[tuple[str, str | None]]:
    """The repos of a list file, in order, without duplicates; a bad line is an error naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"cannot read: {getattr(e, 'strerror', None) or e}", file=path) from None
    repos: list[tuple[str, str | None]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if not m:
            raise FormatError(f"line {n}: {line!r} is not a Hub repo id (org/name or org/name@revision)", file=path)
        if (m.group(1), m.group(2)) not in repos:
            repos.append((m.group(1), m.group(2)))
    if not repos:
        raise FormatError("lists no repos", file=path)
    return repos


def output_name(repo_id: str, target: str) -> str:
    org, name = repo_id.split("/")
    return f"{org}--{name}-{target}"


def push_name(pattern: str, repo_id: str, target: str) -> str:
    org, name = repo_id.split("/")
    try:
        return pattern.format(org=org, name=name, target=target)
    except (KeyError, IndexError, ValueError) as e:
        raise FormatError(f"`push_pattern={pattern}`: use only {{org}}, {{name}}, {{target}} ({e})") from None


def load_state(root: Path) -> dict[str, dict]:
    path = root / STATE_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"unreadable migration state ({e}); move it away to start over", file=path) from None
    return data.get("repos", {}) if isinstance(data, dict) else {}


def save_state(root: Path, target: str, repos: dict[str, dict]) -> None:
    """Write the state so that a crash leaves either the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"target": target, "repos": repos}, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def migrate(
    list_file: str | os.PathLike,
    root: str | os.PathLike,
    *,
    to: str,
    push_pattern: str | None = None,
    private: bool = False,
    verify: bool = True,
    run: bool = True,
    allow_bf16: bool = False,
    requantize: str | None = None,
    base_model: str | os.PathLike | None = None,
    token: str | None = None,
    command: str = "",
    quiet: bool = True,
    on_entry: Callable[[MigrationEntry], None] | None = None,
    step: Callable[[str, str], None] | None = None,
) -> MigrationReport:
    """Convert (verify, push) every repo of ``list_file`` into ``root``; skip those an earlier run finished.

    ``base_model`` is the original model of every repo that records no architecture (INC's default format);
    a repo whose tensors do not match it is refused. Without it each such repo uses the model_path INC
    recorded, when at hand. ``on_entry(entry)`` hears of each repo as it ends, ``step(repo, what)`` of each
    step as it starts (fetch, convert, verify's steps, push)."""
    from .formats import TARGETS

    if to not in TARGETS:
        raise BadArgument(f"unknown target {to!r}; choose from {', '.join(TARGETS)}")
    repos = parse_list(list_file)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OutputError("exists and is not a directory", file=root)
    root.mkdir(parents=True, exist_ok=True)
    if push_pattern:
        for repo_id, _ in repos:
            push_name(push_pattern, repo_id, to)
    state = load_state(root)
    report = MigrationReport(target=to, root=str(root))
    for repo_id, revision in repos:
        key = entry_key(repo_id, revision)
        earlier = state.get(key)
        if earlier and earlier.get("status") == SUCCEEDED and earlier.get("target") == to and Path(earlier.get("output") or "").is_dir():
            entry = MigrationEntry(**{k: v for k, v in earlier.items() if k in MigrationEntry.__dataclass_fields__})
            entry.done_earlier = True
        else:
            entry = _one(repo_id, revision, root, to=to, push_pattern=push_pattern, private=private, verify=verify,
                         run=run, allow_bf16=allow_bf16, requantize=requantize, base_model=base_model, token=token, command=command,
                         quiet=quiet, step=(lambda what, key=key: step(key, what)) if step else None)
            state[key] = {**asdict(entry), "target": to, "done_earlier": False}
            save_state(root, to, state)
        report.entries.append(entry)
        if on_entry:
            on_entry(entry)
    return report


def _one(repo_id, revision, root: Path, *, to, push_pattern, private, verify, run, allow_bf16, requantize, base_model, token, command,
         quiet, step=None) -> MigrationEntry:
    from .pipeline import run as run_pipeline

    out = root / output_name(repo_id, to)
    entry = MigrationEntry(repo_id, revision, FAILED, output=str(out))
    target_repo = push_name(push_pattern, repo_id, to) if push_pattern else None
    try:
        outcome = run_pipeline(repo_id, out, to=to, verify=verify, run_loaders=run, push_to_hub=target_repo, private=private,
                               revision=revision, token=token, command=command, quiet=quiet, base_model=base_model, overwrite=True,
                               allow_bf16=allow_bf16, requantize=requantize, step=step)
        entry.commit = outcome.source_commit
        entry.lossless = outcome.report.lossless
        checked = outcome.checked
        if checked is not None:
            entry.verified = checked.passed
            if not checked.passed:
                first = checked.failures[0]
                entry.reason = f"verify failed: {first.check} {first.layer or ''} {first.detail}".replace("  ", " ")
                return entry
        if outcome.pushed is not None:
            entry.pushed_to, entry.push_url = target_repo, outcome.pushed.pr_url or outcome.pushed.commit_url
        entry.status = SUCCEEDED
    except RefusedConversion as e:
        entry.status, entry.reason, entry.output = REFUSED, e.problem, None
    except WoqconvError as e:
        entry.reason = e.one_line()
    except Exception as e:  # one repo's bug must not stop the batch; it is reported as failed
        entry.reason = f"internal error: {type(e).__name__}: {e}"
    return entry
