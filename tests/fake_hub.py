"""A Hub for tests: the cache layout huggingface_hub reads offline, and an HTTP server on 127.0.0.1.

``populate_cache`` writes a repo into a Hub cache exactly as huggingface_hub lays it out
(``models--org--name/{blobs,snapshots/<sha>,refs/main}``, snapshot files are relative links to blobs
named by their etag: git blob sha1, or sha256 for LFS files).

``FakeHub`` answers the small part of the Hub API that woqconv's calls make, as read in
huggingface_hub's own source: repo info and tree listing, HEAD/GET (with Range) on ``/resolve``,
repo and branch creation, README YAML validation, ``preupload`` (LFS for weights, regular for the
rest), the LFS batch API with a ``basic`` transfer, the upload PUT, and the NDJSON ``commit``
(``create_pr=1`` opens ``refs/pr/N``). Every request is recorded. Xet is never offered: the tests set
``HF_HUB_DISABLE_XET=1``, since huggingface_hub uploads through hf_xet whenever it is installed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def etag(path: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if is_lfs(path) else git_blob_sha1(data)


def commit_sha(files: dict[str, bytes], parent: str = "") -> str:
    h = hashlib.sha1(parent.encode())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + etag(name, files[name]).encode())
    return h.hexdigest()


def read_dir(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def populate_cache(cache: Path, repo_id: str, files: dict[str, bytes], *, branch: str = "main") -> str:
    """Write ``files`` as ``repo_id``'s snapshot at a commit; ``refs/<branch>`` points at it."""
    sha = commit_sha(files)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    for name, data in files.items():
        blob = repo / "blobs" / etag(name, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(sha)
    return sha


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, link target or content hash, and mtime."""
    state = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            state[str(p.relative_to(root))] = ("link", os.readlink(p), st.st_mtime_ns)
        elif p.is_file():
            state[str(p.relative_to(root))] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
        else:
            state[str(p.relative_to(root))] = ("dir", st.st_mtime_ns)
    return state


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    private: bool = False
    prs: int = 0


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.commit_payloads: list[list[dict]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        sha = commit_sha(files)
        self.repos[repo_id] = Repo(refs={"main": sha}, commits={sha: dict(files)})
        return sha

    def files(self, repo_id: str, ref: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.refs[ref]]

    # -- the protocol ---------------------------------------------------------------------

    def _resolve(self, repo_id: str, rev: str):
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, None, "RepoNotFound"
        sha = repo.refs.get(rev, rev if rev in repo.commits else None)
        if sha is None:
            return repo, None, "RevisionNotFound"
        return repo, sha, None

    def _handler(hub):  # noqa: N805 - the closure gives handlers the hub
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _record(self) -> tuple[str, dict, bytes]:
                parts = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with hub._lock:
                    hub.requests.append(Request(self.command, unquote(parts.path), parse_qs(parts.query), dict(self.headers), body))
                return parts.path, parse_qs(parts.query), body

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, head: bool = False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head and self.command != "HEAD":  # a HEAD answer never has a body, errors included
                    self.wfile.write(body)

            def _json(self, status: int, data, headers: dict | None = None):
                self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

            def _error(self, status: int, code: str | None, message: str):
                self._json(status, {"error": message}, {"X-Error-Code": code} if code else None)

            def do_HEAD(self):
                path, query, _ = self._record()
                self._resolve_file(path, head=True)

            def do_GET(self):
                path, query, _ = self._record()
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
                if m:
                    return self._info(unquote(m.group(1)), unquote(m.group(2) or "main"))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
                if m:
                    return self._tree(unquote(m.group(1)), unquote(m.group(2)))
                self._resolve_file(path, head=False)

            def do_POST(self):
                path, query, body = self._record()
                if path == "/api/repos/create":
                    return self._create(json.loads(body))
                if path == "/api/validate-yaml":
                    return self._json(200, {})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path)
                if m:
                    return self._preupload(json.loads(body))
                m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
                if m:
                    return self._batch(json.loads(body))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path)
                if m:
                    return self._branch(unquote(m.group(1)), unquote(m.group(2)))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
                if m:
                    return self._commit(unquote(m.group(1)), unquote(m.group(2)), query, body)
                self._error(404, None, f"no route {path}")

            def do_PUT(self):
                path, query, body = self._record()
                m = re.fullmatch(r"/_lfs/([0-9a-f]{64})", path)
                if not m or hashlib.sha256(body).hexdigest() != m.group(1):
                    return self._error(400, None, "LFS upload does not match its oid")
                with hub._lock:
                    hub.lfs[m.group(1)] = body
                self._send(200)

            # -- read side
            def _info(self, repo_id, rev):
                repo, sha, err = hub._resolve(repo_id, rev)
                if err:
                    return self._error(404, err, f"{repo_id}@{rev}: {err}")
                files = repo.commits[sha]
                self._json(200, {
                    "id": repo_id, "sha": sha, "private": repo.private,
                    "siblings": [{"rfilename": n, "size": len(d)} for n, d in sorted(files.items())],
                })

            def _tree(self, repo_id, rev):
                repo, sha, err = hub._resolve(repo_id, rev)
                if err:
                    return self._error(404, err, f"{repo_id}@{rev}: {err}")
                entries = []
                for n, d in sorted(repo.commits[sha].items()):
                    e = {"type": "file", "path": n, "size": len(d), "oid": git_blob_sha1(d)}
                    if is_lfs(n):
                        e["lfs"] = {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}
                    entries.append(e)
                self._json(200, entries)

            def _resolve_file(self, path, *, head):
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if not m:
                    return self._error(404, None, f"no route {path}")
                repo_id, rev, name = unquote(m.group(1)), unquote(m.group(2)), unquote(m.group(3))
                repo, sha, err = hub._resolve(repo_id, rev)
                if err:
                    return self._error(404, err, f"{repo_id}@{rev}: {err}")
                data = repo.commits[sha].get(name)
                if data is None:
                    return self._error(404, "EntryNotFound", f"{name} not in {repo_id}@{rev}")
                headers = {"X-Repo-Commit": sha, "ETag": f'"{etag(name, data)}"', "Accept-Ranges": "bytes"}
                if is_lfs(name):
                    headers["X-Linked-Etag"] = f'"{etag(name, data)}"'
                    headers["X-Linked-Size"] = str(len(data))
                status = 200
                rng = self.headers.get("Range") or self.headers.get("range")
                if rng and not head:
                    a, b = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip()).groups()
                    start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    data, status = data[start : end + 1], 206
                self._send(status, data, headers, head=head)

            # -- write side
            def _create(self, payload):
                repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                if "/" not in repo_id:
                    repo_id = f"user/{repo_id}"
                with hub._lock:
                    if repo_id in hub.repos:  # the Hub's 409 names the existing repo's url too
                        return self._json(409, {"error": "You already created this model repo", "url": f"{hub.endpoint}/{repo_id}"})
                    empty = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
                    sha = commit_sha(empty)
                    hub.repos[repo_id] = Repo(refs={"main": sha}, commits={sha: empty}, private=payload.get("visibility") == "private")
                self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})

            def _preupload(self, payload):
                files = [{"path": f["path"], "uploadMode": "lfs" if is_lfs(f["path"]) else "regular", "shouldIgnore": False, "oid": None}
                         for f in payload["files"]]
                self._json(200, {"files": files})

            def _batch(self, payload):
                objects = []
                for o in payload["objects"]:
                    entry = {"oid": o["oid"], "size": o["size"]}
                    if o["oid"] not in hub.lfs:
                        entry["actions"] = {"upload": {"href": f"{hub.endpoint}/_lfs/{o['oid']}"}}
                    objects.append(entry)
                self._json(200, {"transfer": "basic", "objects": objects})

            def _branch(self, repo_id, branch):
                repo, sha, err = hub._resolve(repo_id, "main")
                if err:
                    return self._error(404, err, err)
                if branch in repo.refs:
                    return self._error(409, None, "branch exists")
                repo.refs[branch] = sha
                self._json(200, {})

            def _commit(self, repo_id, rev, query, body):
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                with hub._lock:
                    hub.commit_payloads.append(lines)
                    repo, sha, err = hub._resolve(repo_id, rev)
                    if err:
                        return self._error(404, err, err)
                    files = dict(repo.commits[sha])
                    for item in lines[1:]:
                        v = item["value"]
                        if item["key"] == "file":
                            files[v["path"]] = base64.b64decode(v["content"])
                        elif item["key"] == "lfsFile":
                            if v["oid"] not in hub.lfs:
                                return self._error(400, None, f"LFS object {v['oid']} was never uploaded")
                            files[v["path"]] = hub.lfs[v["oid"]]
                        elif item["key"] == "deletedFile":
                            files.pop(v["path"], None)
                    new = commit_sha(files, parent=sha)
                    repo.commits[new] = files
                    pr_url = None
                    if query.get("create_pr") == ["1"]:
                        repo.prs += 1
                        repo.refs[f"refs/pr/{repo.prs}"] = new
                        pr_url = f"{hub.endpoint}/{repo_id}/discussions/{repo.prs}"
                    else:
                        repo.refs[rev] = new
                self._json(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{new}", "commitOid": new, "pullRequestUrl": pr_url})

        return Handler
