"""A local stand-in for the Hugging Face Hub's upload API, on 127.0.0.1, for the push tests.

It speaks the subset of the Hub's HTTP protocol that ``huggingface_hub`` uses to create a repository and commit
files on the classic path (Xet disabled): repo creation, branches, README metadata validation, the preupload call
that chooses regular or LFS upload per file, the Git LFS batch API with "basic" transfers (PUT to a URL of this
server, then verify), and the NDJSON commit. It keeps what it receives (repositories, branches, files, LFS objects,
commits, and a log of requests) so tests can compare bytes; tests read the pushed files with ``files()``.

It also serves dataset repositories for download (``add_dataset``): the repository info, tree listing, paths-info
and ``resolve`` (HEAD, GET and byte ranges) calls through which ``datasets.load_dataset(name, streaming=True)``
reads a Hub dataset; and model repositories (``add_model``): the same calls on the model paths, through which
``from_pretrained(name)`` downloads a checkpoint.

    with HubServer() as hub:                       # HF_ENDPOINT=hub.url
        hub.fail("/api/repos/create", times=2)     # the next two repo creations answer 503
        ...
        hub.files("me/tiny")                       # {path: bytes} of the main branch
        hub.add_dataset("me/text", {"train.jsonl": data})  # then load_dataset("me/text", streaming=True)
        hub.add_model("me/bert", {"config.json": data, ...})  # then AutoModel.from_pretrained("me/bert")
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pkl", ".pt", ".pth", ".model", ".h5", ".npy", ".msgpack", ".zip", ".gz")
LFS_MIN_BYTES = 10 * 2**20  # the Hub stores bigger files in LFS whatever their name


class HubServer:
    def __init__(self):
        self.lock = threading.Lock()
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content
        self.commits: list[dict] = []  # {"repo", "revision", "summary", "paths", "user_agent"}
        self.creations: list[dict] = []  # every repo-creation request: {"repo", "private", "status"}
        self.requests: list[dict] = []  # {"method", "path", "status", "user_agent", "authorization"}
        self.failures: list[list] = []  # [path substring, remaining count]
        self.datasets: dict[str, dict[str, bytes]] = {}  # repo_id -> {path: bytes}, served for download
        self.models: dict[str, dict[str, bytes]] = {}  # repo_id -> {path: bytes}, served for download
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(self, path_contains: str = "", times: int = 1) -> None:
        """Answer the next ``times`` requests whose path contains ``path_contains`` with 503."""
        with self.lock:
            self.failures.append([path_contains, times])

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[repo_id]["branches"][revision])

    def add_dataset(self, repo_id: str, files: dict[str, bytes]) -> None:
        """Serve a dataset repository for download (its single revision is "main")."""
        with self.lock:
            self.datasets[repo_id] = dict(files)

    def add_model(self, repo_id: str, files: dict[str, bytes]) -> None:
        """Serve a model repository for download (its single revision is "main")."""
        with self.lock:
            self.models[repo_id] = dict(files)

    def write_repo(self, repo_id: str, destination: Path, revision: str = "main") -> Path:
        """What the server stored, as files under ``destination`` (to load with from_pretrained)."""
        for path, content in self.files(repo_id, revision).items():
            target = Path(destination) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return Path(destination)

    # ---------------------------------------------------------------------------------------------- handling

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, payload=None, headers: dict | None = None) -> None:
                hub._send(self, False, status, payload if payload is not None else {}, headers=headers)

            def do_GET(self):
                self._body()
                hub._download(self, head=False)

            def do_HEAD(self):
                hub._download(self, head=True)

            def do_PUT(self):
                self._dispatch()

            def do_POST(self):
                self._dispatch()

            def _dispatch(self):
                body = self._body()  # always read whole: the connection is kept alive
                path = urlsplit(self.path).path
                with hub.lock:
                    failure = next((f for f in hub.failures if f[1] > 0 and f[0] in path), None)
                    if failure:
                        failure[1] -= 1
                if failure:
                    return self._reply(503, {"error": "Service temporarily unavailable (injected)"})
                try:
                    hub._route(self, self.command, path, body)
                except Exception as error:  # a bug here should show up as an HTTP error in the client
                    self._reply(500, {"error": f"test server: {type(error).__name__}: {error}"})

        return Handler

    def _route(self, handler, method: str, path: str, body: bytes) -> None:
        reply = handler._reply
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            with self.lock:
                exists = repo in self.repos
                if not exists:
                    self.repos[repo] = {"private": payload.get("visibility") == "private" or bool(payload.get("private")),
                                        "branches": {"main": {}}}
                self.creations.append({"repo": repo, "private": self.repos[repo]["private"], "status": 409 if exists else 200})
            if exists:
                return reply(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"})
            return reply(200, {"url": f"{self.url}/{repo}", "name": repo})
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
            try:
                metadata = yaml.safe_load(match.group(1)) if match else {}
                if not isinstance(metadata, dict):
                    raise yaml.YAMLError("metadata is not a mapping")
            except yaml.YAMLError as error:
                return reply(400, {"errors": [{"message": f"invalid YAML: {error}"}], "warnings": []})
            return reply(200, {"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/models/(.+)/(preupload|commit|branch)/([^/]+)", path)
        if method == "POST" and match:
            repo, action, revision = match.group(1), match.group(2), unquote(match.group(3))
            with self.lock:
                known = repo in self.repos
            if not known:
                return reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return getattr(self, f"_{action}")(handler, repo, revision, body)
        match = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", path)
        if method == "POST" and match and match.group(1) in self.datasets:
            fields = json.loads(body) if body.lstrip().startswith(b"{") else parse_qs(body.decode())
            return reply(200, self._entries(match.group(1), paths=list(fields.get("paths", []))))
        match = re.fullmatch(r"/(.+)\.git/info/lfs/objects/batch", path)
        if method == "POST" and match:
            return self._lfs_batch(handler, json.loads(body))
        match = re.fullmatch(r"/lfs-objects/([0-9a-f]{64})", path)
        if method == "PUT" and match:
            if hashlib.sha256(body).hexdigest() != match.group(1):
                return reply(400, {"error": "content does not match its sha256"})
            with self.lock:
                self.lfs_objects[match.group(1)] = body
            return reply(200, {})
        if method == "POST" and path == "/lfs-verify":
            payload = json.loads(body)
            with self.lock:
                stored = self.lfs_objects.get(payload["oid"])
            ok = stored is not None and len(stored) == payload["size"]
            return reply(200 if ok else 422, {} if ok else {"error": "object missing or of another size"})
        return reply(404, {"error": f"test server: no route for {method} {path}"})

    # ---------------------------------------------------------------------------------------------- downloads

    def _entries(self, repo: str, prefix: str = "", paths: list[str] | None = None, files: dict | None = None) -> list[dict]:
        """Tree / paths-info entries: the files under ``prefix`` and their folders, or exactly ``paths``."""
        files = self.datasets[repo] if files is None else files
        names = [p for p in paths if p in files] if paths is not None else [p for p in files if p.startswith(prefix)]
        entries = [{"type": "file", "path": name, "size": len(files[name]), "oid": hashlib.sha1(files[name]).hexdigest()}
                   for name in sorted(names)]
        if paths is None:
            folders = {"/".join(name.split("/")[: i + 1]) for name in names for i in range(name.count("/"))}
            entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
        return entries

    def _download(self, handler, head: bool) -> None:
        """Dataset and model repository info, tree, and file downloads (with byte ranges); anything else is 404."""
        path = unquote(urlsplit(handler.path).path)
        kind = "datasets" if path.startswith(("/api/datasets/", "/datasets/")) else "models"
        info = re.fullmatch(rf"/api/{kind}/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        tree = re.fullmatch(rf"/api/{kind}/([^/]+/[^/]+)/tree/([^/]+)/?(.*)", path)
        resolve = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)" if kind == "datasets"
                               else r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo = next((m.group(1) for m in (info, tree, resolve) if m), None)
        with self.lock:
            files = (self.datasets if kind == "datasets" else self.models).get(repo)
        if files is None:
            return self._send(handler, head, 404, {"error": "test server: not found"}, "RepoNotFound")
        commit = hashlib.sha1(repo.encode()).hexdigest()
        if info:
            return self._send(handler, head, 200, {
                "id": repo, "sha": commit, "private": False, "gated": False, "disabled": False, "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(files)], "downloads": 0, "cardData": {},
                "lastModified": "2026-01-01T00:00:00.000Z"})
        if tree:
            return self._send(handler, head, 200, self._entries(repo, tree.group(3), files=files))
        content = files.get(resolve.group(3))
        if content is None:
            return self._send(handler, head, 404, {"error": "test server: no such file"}, "EntryNotFound")
        first, last = 0, len(content) - 1
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))
        if ranged:
            first, last = int(ranged.group(1)), min(int(ranged.group(2) or last), last)
        headers = {"ETag": f'"{hashlib.sha1(content).hexdigest()}"', "X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if ranged:
            headers["Content-Range"] = f"bytes {first}-{last}/{len(content)}"
        self._send(handler, head, 206 if ranged else 200, content[first: last + 1], headers=headers)

    def _send(self, handler, head: bool, status: int, payload, error_code: str = "", headers: dict | None = None) -> None:
        """Answer a request (``head``: headers only, for HEAD); payload is bytes or JSON data; every answer is logged."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        headers = {"Content-Type": "application/octet-stream" if isinstance(payload, bytes) else "application/json",
                   "Content-Length": str(len(body)), **({"X-Error-Code": error_code} if error_code else {}),
                   **(headers or {})}
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        if not head:
            handler.wfile.write(body)
        with self.lock:
            self.requests.append({"method": handler.command, "path": urlsplit(handler.path).path, "status": status,
                                  "user_agent": handler.headers.get("User-Agent", ""),
                                  "authorization": handler.headers.get("Authorization", "")})

    def _branch(self, handler, repo: str, branch: str, body: bytes) -> None:
        with self.lock:
            branches = self.repos[repo]["branches"]
            if branch in branches:
                return handler._reply(409, {"error": "Reference already exists"})
            branches[branch] = dict(branches["main"])
        return handler._reply(200, {})

    def _preupload(self, handler, repo: str, revision: str, body: bytes) -> None:
        files = json.loads(body)["files"]
        modes = [{"path": f["path"], "shouldIgnore": False, "oid": None,
                  "uploadMode": "lfs" if f["size"] >= LFS_MIN_BYTES or f["path"].endswith(LFS_SUFFIXES) else "regular"}
                 for f in files]
        return handler._reply(200, {"files": modes, "commitOid": "0" * 40})

    def _lfs_batch(self, handler, payload: dict) -> None:
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            with self.lock:
                stored = item["oid"] in self.lfs_objects
            if not stored:  # no "actions": the client skips objects the server already has
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-objects/{item['oid']}"},
                                    "verify": {"href": f"{self.url}/lfs-verify"}}
            objects.append(entry)
        return handler._reply(200, {"transfer": "basic", "objects": objects},
                              {"Content-Type": "application/vnd.git-lfs+json"})

    def _commit(self, handler, repo: str, revision: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        with self.lock:
            branches = self.repos[repo]["branches"]
            if revision not in branches:
                return handler._reply(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
            files = dict(branches[revision])
            for line in lines:
                value = line["value"]
                if line["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "lfsFile":
                    if value["oid"] not in self.lfs_objects:
                        return handler._reply(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                    files[value["path"]] = self.lfs_objects[value["oid"]]
                elif line["key"] == "deletedFile":
                    files.pop(value["path"], None)
                elif line["key"] == "deletedFolder":
                    files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            branches[revision] = files
            oid = hashlib.sha1(f"{repo}{revision}{len(self.commits)}".encode()).hexdigest()
            self.commits.append({"repo": repo, "revision": revision, "summary": header["summary"],
                                 "paths": sorted(line["value"]["path"] for line in lines if line["key"] != "header"),
                                 "user_agent": handler.headers.get("User-Agent", "")})
        return handler._reply(200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid,
                                    "pullRequestUrl": None})


def unused_port_url() -> str:
    """The URL of a port on 127.0.0.1 where nothing listens: a Hub that is down (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
