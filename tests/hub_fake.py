"""A local stand-in for the Hugging Face Hub's file API, for ``HF_ENDPOINT=http://127.0.0.1:PORT``.

It serves what ``huggingface_hub.snapshot_download`` asks for, shaped like huggingface.co's
answers (read from huggingface_hub's own code: ``hf_api.py``, ``file_download.py``,
``utils/_http.py``):

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` — model info: ``id``,
  ``sha`` (the commit), ``gated`` (False, or "manual" for a licence-gated model), ``siblings``;
* ``GET /api/models/{repo}/tree/{rev}?recursive=true`` — the file listing (``type``, ``path``,
  ``size``, ``oid``; ``lfs`` with ``oid``/``size`` for weights);
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` — the file, with ``X-Repo-Commit``, ``ETag``
  (``X-Linked-Etag`` and ``X-Linked-Size`` for LFS files, as the hub sends), ``Content-Length``,
  ``Accept-Ranges: bytes``; a ``Range: bytes=N-`` request gets 206 with ``Content-Range``.

Errors as the hub sends them: an unknown repository is 401 with ``X-Error-Code: RepoNotFound``;
a gated one, asked for a file without a token that was granted access, is 401 (no token) or 403
(a token without access) with ``X-Error-Code: GatedRepo``. ``cut_after`` makes the server close
the connection once mid-file after that many bytes of the named file (a dropped download),
and ``fail_resumes`` makes the resumed requests that follow fail with 503 (the first run then
gives up, leaving its partial file for the next run). Every request is recorded (``requests``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Recorded:
    method: str
    path: str
    range: str | None  # the Range header of a resumed download
    authorization: str | None


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False
    allowed_tokens: set[str] = field(default_factory=set)  # tokens whose account accepted the licence
    lfs: tuple[str, ...] = (".safetensors",)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Recorded] = []
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut (once)
        self.fail_resumes = 0  # how many Range requests after a cut get a 503
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo_id: str, files: dict[str, bytes], **kwargs: Any) -> FakeRepo:
        self.repos[repo_id] = FakeRepo(files, **kwargs)
        return self.repos[repo_id]

    def gets(self, filename: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)
                and "/resolve/" in r.path]

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status,
                                 headers={"X-Error-Code": code, "X-Error-Message": message})

    def _repo(self, request: web.Request) -> tuple[str, FakeRepo | None]:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        return repo_id, self.repos.get(repo_id)

    def _is_lfs(self, repo: FakeRepo, path: str) -> bool:
        return path.endswith(repo.lfs)

    @staticmethod
    def _git_oid(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    # ------------------------------------------------------------------ routes

    async def _record(self, request: web.Request) -> None:
        self.requests.append(Recorded(request.method, request.path, request.headers.get("Range"),
                                      request.headers.get("Authorization")))

    async def model_info(self, request: web.Request) -> web.Response:
        await self._record(request)
        repo_id, repo = self._repo(request)
        if repo is None:
            return self._error(401, "RepoNotFound", f"Repository Not Found for url: {request.url}.")
        return web.json_response({
            "_id": "fake", "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": COMMIT,
            "private": False, "disabled": False, "gated": "manual" if repo.gated else False,
            "downloads": 0, "likes": 0, "tags": ["transformers"], "library_name": "transformers",
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": name} for name in sorted(repo.files)],
        })

    async def tree(self, request: web.Request) -> web.Response:
        await self._record(request)
        repo_id, repo = self._repo(request)
        if repo is None:
            return self._error(401, "RepoNotFound", f"Repository Not Found for url: {request.url}.")
        entries = []
        for path, data in sorted(repo.files.items()):
            entry: dict[str, Any] = {"type": "file", "oid": self._git_oid(data), "size": len(data), "path": path}
            if self._is_lfs(repo, path):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return web.json_response(entries)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        repo_id, repo = self._repo(request)
        if repo is None:
            return self._error(401, "RepoNotFound", f"Repository Not Found for url: {request.url}.")
        path = request.match_info["path"]
        if repo.gated:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not token:
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                                                     "to it and be authenticated to access it. Please log in.")
            if token not in repo.allowed_tokens:
                return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in "
                                                     "the authorized list. Visit the model page to ask for access.")
        data = repo.files.get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on revision {COMMIT}")
        headers = {"X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if self._is_lfs(repo, path):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{self._git_oid(data)}"'
        start = 0
        status = 200
        range_header = request.headers.get("Range")
        if range_header:
            if self.fail_resumes > 0:
                self.fail_resumes -= 1
                return web.Response(status=503, text="Service Unavailable")
            start = int(range_header.split("=")[1].split("-")[0])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers["Content-Length"] = str(len(body))
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        cut = self.cut_after.pop(path, None) if start == 0 else None
        if cut is not None:
            await response.write(body[:cut])
            request.transport.close()  # the connection drops mid-file
            return response
        await response.write(body)
        await response.write_eof()
        return response

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> "FakeHub":
        app = web.Application()
        app.router.add_get("/api/models/{org}/{name}", self.model_info)
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self.model_info)
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}", self.tree)
        app.router.add_route("HEAD", "/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve)
        app.router.add_get("/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve, allow_head=False)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
