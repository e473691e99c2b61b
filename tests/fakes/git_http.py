"""A smart-HTTP git server on 127.0.0.1 for tests: ``git http-backend`` behind basic auth.

Serves every bare repository under ``root`` (``<url>/<name>.git``) with push enabled. With
``username``/``token`` set, every request must carry exactly that pair (else 401 with a
Basic challenge, which is what makes git call its askpass). ``fail_with(503)`` makes the next
requests fail on demand.

Use it from a trio test as ``url = await nursery.start(server.serve)``, or as a context
manager (``with GitHttpServer(root) as url:``) from a plain fixture. It runs in threads:
git's clients are subprocesses, so nothing needs the trio loop.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .threaded_http import QuietHandler, ThreadedHTTPFake


@dataclass
class SeenRequest:
    method: str
    path: str
    authorization: str | None
    status: int


class GitHttpServer(ThreadedHTTPFake):
    def __init__(self, root: Path, *, username: str | None = None, token: str | None = None):
        self.root = Path(root)
        self.username = username
        self.token = token
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._failures: list[int] = []
        self._fail_forever: int | None = None

    # -- failure injection ---------------------------------------------------------------
    def fail_with(self, status: int, times: int | None = 1) -> None:
        """Answer the next ``times`` requests (all of them when None) with ``status``."""
        with self._lock:
            if times is None:
                self._fail_forever = status
            else:
                self._failures.extend([status] * times)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()
            self._fail_forever = None

    def _next_failure(self) -> int | None:
        with self._lock:
            if self._failures:
                return self._failures.pop(0)
            return self._fail_forever

    def url_for(self, repo: str) -> str:
        return f"{self.url}/{repo}"

    # -- lifecycle -----------------------------------------------------------------------


class _Handler(QuietHandler):
    owner: GitHttpServer

    def _record(self, status: int) -> None:
        with self.owner._lock:
            self.owner.requests.append(
                SeenRequest(self.command, self.path, self.headers.get("Authorization"), status)
            )

    def _plain(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._record(status)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        owner = self.owner
        if owner.username is None and owner.token is None:
            return True
        expected = base64.b64encode(f"{owner.username}:{owner.token}".encode()).decode()
        return self.headers.get("Authorization") == f"Basic {expected}"

    def _handle(self) -> None:
        body = self._read_body()
        failure = self.owner._next_failure()
        if failure is not None:
            self._plain(failure, f"injected failure {failure}\n")
            return
        if not self._authorized():
            self._plain(401, "authentication required\n", {"WWW-Authenticate": 'Basic realm="fake git"'})
            return
        parts = urlsplit(self.path)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": self.owner.username or "anonymous",
        }
        if enc := self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = enc
        if proto := self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = proto
        proc = subprocess.run(
            ["git", "-c", "http.receivepack=true", "http-backend"],
            input=body,
            env=env,
            capture_output=True,
            check=False,
        )
        head, sep, payload = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = proc.stdout.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name.strip(), value.strip()))
        if not sep:  # http-backend failed before writing headers
            status, payload, headers = 500, proc.stderr, [("Content-Type", "text/plain")]
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self._record(status)


def make_bare_repo(
    parent: Path,
    name: str = "project.git",
    *,
    branches: dict[str, dict[str, str]] | None = None,
    head: str = "main",
) -> Path:
    """Create ``parent/name``, a bare repository with one commit per branch holding ``files``
    (default: branch main with a README and a small module), HEAD pointing at ``head``."""
    branches = branches or {
        "main": {"README.md": "# project\n", "calc.py": "def add(a, b):\n    return a - b\n"}
    }
    bare = Path(parent) / name
    work = Path(parent) / f".{name}.work"
    ident = ["-c", "user.name=Fixture", "-c", "user.email=fixture@example.invalid"]

    def git(*args: str, cwd: Path = work) -> None:
        subprocess.run(["git", *ident, *args], cwd=cwd, check=True, capture_output=True)

    work.mkdir(parents=True)
    git("init", "--quiet", "-b", "root-unused")
    for branch, files in branches.items():
        git("checkout", "--quiet", "--orphan", branch)
        git("rm", "-rf", "--quiet", "--ignore-unmatch", ".")
        for rel, text in files.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        git("add", "-A")
        git("commit", "--quiet", "-m", f"initial {branch}")
    git("init", "--quiet", "--bare", str(bare), cwd=Path(parent))
    git("push", "--quiet", str(bare), *[f"refs/heads/{b}:refs/heads/{b}" for b in branches])
    git("symbolic-ref", "HEAD", f"refs/heads/{head}", cwd=bare)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return bare


def git_out(repo: Path, *args: str) -> str:
    """stdout of a git command in ``repo`` (tests only: blocking)."""
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


GitHttpServer.handler_class = _Handler
