"""A Dropbox API server on loopback for the Dropbox SDK's real HTTPS requests.

Dropbox has no emulator.  This server speaks the few routes of its HTTP API (v2) that the Dropbox adapter
uses, on 127.0.0.1 over TLS with a certificate made for the test (the SDK only speaks HTTPS): metadata,
folder listings in pages (``has_more`` / cursor), delete, download, and upload sessions.  The wire format is
Dropbox's: RPC routes take and answer JSON; download and upload routes carry their argument in the
``Dropbox-API-Arg`` header (download: the result in ``Dropbox-API-Result``); a route error is HTTP 409 with
``{"error_summary": …, "error": {…}}``, an expired or revoked token HTTP 401, an outage 5xx.

``fail[route] = (status, body)`` makes a route answer that error; ``fail[route] = "silent"`` makes it take
the request and never answer (until :meth:`close`).  :func:`point` aims an SDK client at the server.
"""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


#: A route error as Dropbox sends it: HTTP 409 and the error's tags.
def route_error(*tags: str) -> tuple[int, dict]:
    error: dict = {".tag": tags[-1]}
    for tag in reversed(tags[:-1]):
        error = {".tag": tag, tag: error}
    return 409, {"error_summary": "/".join(tags) + "/..", "error": error}


NOT_FOUND = route_error("path", "not_found")


class DropboxServer:
    def __init__(self, workdir: Path, page: int = 2):
        self.cert = workdir / "dropbox-cert.pem"
        key = workdir / "dropbox-key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(self.cert), "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        import ssl

        self.files: dict[str, bytes] = {}  # full path ("/backups/x") -> content
        self.sessions: dict[str, bytearray] = {}
        self.fail: dict[str, object] = {}
        self.requests: list[str] = []
        self.uploaded: list[int] = []  # bytes of each upload-session request
        self.page = page
        self.released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                route = self.path.removeprefix("/2/")
                server.requests.append(route)
                if route.startswith("files/upload_session/"):
                    server.uploaded.append(len(body))
                failure = server.fail.get(route)
                if failure == "silent":
                    server.released.wait()
                    self.close_connection = True
                    return
                if failure is not None:
                    status, payload = failure
                    return self.answer(status, payload)
                arg = self.headers.get("Dropbox-API-Arg")
                arg = json.loads(arg) if arg else (json.loads(body) if body and route in RPC else None)
                return getattr(server, "route_" + route.replace("/", "_"))(self, arg, body)

            def answer(self, status: int, payload=None, data: bytes | None = None, result=None):
                raw = data if data is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if data is not None else "application/json")
                if result is not None:
                    self.send_header("Dropbox-API-Result", json.dumps(result))
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- the routes ---------------------------------------------------------------------------------

    @staticmethod
    def _file(path: str, size: int) -> dict:
        return {
            ".tag": "file", "name": path.rsplit("/", 1)[-1], "id": "id:" + str(abs(hash(path))),
            "client_modified": "2020-01-01T00:00:00Z", "server_modified": "2020-01-01T00:00:00Z",
            "rev": "0123456789abcdef", "size": size, "path_lower": path.lower(), "path_display": path,
        }  # fmt: skip

    @staticmethod
    def _folder(path: str) -> dict:
        return {".tag": "folder", "name": path.rsplit("/", 1)[-1], "id": "id:d" + str(abs(hash(path))),
                "path_lower": path.lower(), "path_display": path}  # fmt: skip

    def _is_folder(self, path: str) -> bool:
        return any(name.startswith(path.rstrip("/") + "/") for name in self.files)

    def route_files_get_metadata(self, handler, arg, body):
        path = arg["path"]
        if path in self.files:
            return handler.answer(200, self._file(path, len(self.files[path])))
        if self._is_folder(path):
            return handler.answer(200, self._folder(path))
        return handler.answer(*NOT_FOUND)

    def _entries(self, path: str) -> list[dict]:
        prefix = path.rstrip("/") + "/"
        files, folders = [], set()
        for name in sorted(self.files):
            if name.startswith(prefix):
                rest = name[len(prefix) :]
                if "/" in rest:
                    folders.add(prefix + rest.split("/", 1)[0])
                else:
                    files.append(self._file(name, len(self.files[name])))
        return [self._folder(f) for f in sorted(folders)] + files

    def _page(self, handler, path: str, start: int):
        entries = self._entries(path)
        chunk = entries[start : start + self.page]
        more = start + self.page < len(entries)
        handler.answer(200, {"entries": chunk, "cursor": f"{start + self.page}:{path}", "has_more": more})

    def route_files_list_folder(self, handler, arg, body):
        path = arg["path"]
        if path and not self._is_folder(path):
            return handler.answer(*NOT_FOUND)
        return self._page(handler, path, 0)

    def route_files_list_folder_continue(self, handler, arg, body):
        start, path = arg["cursor"].split(":", 1)
        return self._page(handler, path, int(start))

    def route_files_delete_v2(self, handler, arg, body):
        path = arg["path"]
        if path not in self.files:
            return handler.answer(*route_error("path_lookup", "not_found"))
        size = len(self.files.pop(path))
        return handler.answer(200, {"metadata": self._file(path, size)})

    def route_files_download(self, handler, arg, body):
        path = arg["path"]
        if path not in self.files:
            return handler.answer(*NOT_FOUND)
        data = self.files[path]
        return handler.answer(200, data=data, result=self._file(path, len(data)))

    def route_files_upload_session_start(self, handler, arg, body):
        session = f"s{len(self.sessions)}"
        self.sessions[session] = bytearray(body)
        return handler.answer(200, {"session_id": session})

    def route_files_upload_session_append_v2(self, handler, arg, body):
        cursor = arg["cursor"]
        assert cursor["offset"] == len(self.sessions[cursor["session_id"]])
        self.sessions[cursor["session_id"]] += body
        return handler.answer(200, None)

    def route_files_upload_session_finish(self, handler, arg, body):
        cursor, path = arg["cursor"], arg["commit"]["path"]
        data = bytes(self.sessions.pop(cursor["session_id"]) + body)
        self.files[path] = data
        return handler.answer(200, self._file(path, len(data)))


#: Routes whose argument is the JSON body (the others carry it in the Dropbox-API-Arg header).
RPC = {"files/get_metadata", "files/list_folder", "files/list_folder/continue", "files/delete_v2"}


def point(client, server: DropboxServer) -> None:
    """Aim the Dropbox SDK ``client`` at ``server`` (both of its hosts), trusting the server's certificate."""
    import dropbox
    from dropbox.dropbox_client import HOST_API, HOST_CONTENT

    where = f"127.0.0.1:{server.port}"
    client._host_map = {**client._host_map, HOST_API: where, HOST_CONTENT: where}
    session = dropbox.create_session(ca_certs=str(server.cert))
    session.trust_env = False  # REQUESTS_CA_BUNDLE (set on many machines) would replace that certificate
    client._session = session
