"""A local stand-in for the Hugging Face Hub and for plain download sites, for tests (no network needed).

Serves, on 127.0.0.1 at a random port:
  HEAD/GET /{repo_id}/resolve/{revision}/{path}   the Hub's file endpoint; revision = "main" or a commit
  HEAD/GET /files/{name}                          plain URL downloads (weights files, zip archives)

The Hub endpoint answers with the headers huggingface_hub's `get_hf_file_metadata` reads (checked against
huggingface_hub 2.4's file_download.py): `X-Repo-Commit` (required, or it refuses the server), `ETag`
(quoted; names the cached blob), `Content-Length` (the expected size). Misses are 404s carrying the
`X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) that `hf_raise_for_status` maps to
its exceptions. Every request is recorded in `server.requests` so tests can assert that a cache hit made none.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class HubServer:
    """Hub repos (repo -> commit -> path -> bytes, with a `main` branch) and plain URL files, served over HTTP."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}
        self.branches: dict[str, dict[str, str]] = {}
        self.url_files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def add_file(self, repo: str, path: str, data: bytes, commit: str | None = None) -> str:
        """Store `data` at `path` in `repo`, returning the commit that holds it.

        Without `commit`, a new commit is made from `main`'s files plus this one and `main` moves to it (so
        adding a file twice leaves the old bytes reachable by the old commit). With `commit` (40 hex), the file
        joins that commit, created empty if new; `main` points to it only if the repo had no `main` yet."""
        with self._lock:
            commits = self.commits.setdefault(repo, {})
            branches = self.branches.setdefault(repo, {})
            if commit is None:
                commit = hashlib.sha1(f"{repo}:{next(self._counter)}".encode()).hexdigest()
                commits[commit] = dict(commits.get(branches.get("main", ""), {}))
                branches["main"] = commit
            else:
                commits.setdefault(commit, {})
                branches.setdefault("main", commit)
            commits[commit][path] = data
            return commit

    def add_url_file(self, name: str, data: bytes) -> str:
        """Serve `data` at /files/{name}; returns its URL."""
        self.url_files[name] = data
        return f"{self.endpoint}/files/{name}"

    def file_table(self, repo: str, path: str, *, commit: str | None = None, pinned: bool = True,
                   checksum: bool = True) -> str:
        """The manifest inline table for a served Hub file, e.g. for `files.weights = {...}`: pinned to
        `commit` (default: `main`'s) and carrying the file's sha256 and size unless told otherwise."""
        commit = commit or self.branches[repo]["main"]
        data = self.commits[repo][commit][path]
        fields = [f'hub = "{repo}"', f'path = "{path}"', f'revision = "{commit if pinned else ""}"']
        if checksum:
            fields += [f'sha256 = "{hashlib.sha256(data).hexdigest()}"', f"size = {len(data)}"]
        return "{ " + ", ".join(fields) + " }"

    def resolve(self, repo: str, revision: str, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of a Hub `resolve` request."""
        if repo not in self.commits:
            return 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found"
        commit = self.branches[repo].get(revision, revision)
        if commit not in self.commits[repo]:
            return 404, {"X-Error-Code": "RevisionNotFound"}, b"Revision not found"
        data = self.commits[repo][commit].get(path)
        if data is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"Entry not found"
        etag = hashlib.sha256(data).hexdigest()
        return 200, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, data


def _handler_for(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def _answer(self, *, with_body: bool) -> None:
            path = urlsplit(self.path).path
            server.requests.append((self.command, path))
            status, headers, body = self._route(path)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def _route(self, path: str) -> tuple[int, dict[str, str], bytes]:
            if path.startswith("/files/"):
                data = server.url_files.get(unquote(path[len("/files/"):]))
                return (200, {}, data) if data is not None else (404, {}, b"not found")
            repo, sep, rest = path.lstrip("/").partition("/resolve/")
            revision, _, file_path = rest.partition("/")
            if not sep or not file_path:
                return 404, {}, b"not found"
            return server.resolve(unquote(repo), unquote(revision), unquote(file_path))

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

    return Handler
