"""A small Dify-shaped WSGI app for dify-shaper's end-to-end tests (tests/e2e.rs).

Served by real gunicorn with gevent workers, in front of a real PostgreSQL, so the tests see
what a self-hosted Dify does under load: a worker's `--worker-connections` bound with the
rest parked in the listen backlog, and PostgreSQL's `max_connections` bound answered as Dify
1.12.1 answers it: the request's first connection (the API-key check) fails outside the
endpoint's error handling, and the client gets Flask-RESTx's generic 500 envelope
(`code` `unknown`), byte for byte.

Endpoints:

- `POST /v1/workflows/run` (JSON body, `Authorization: Bearer app-…`): holds one PostgreSQL
  connection for the whole run (`SELECT pg_sleep(…)`, which also yields the gevent worker).
  `response_mode` `blocking` answers JSON after the service time; `streaming` answers
  `text/event-stream`: `workflow_started`, `X-Events` × `node_finished` spaced evenly over
  the service time, `workflow_finished`, each frame flushed on its own.
  `X-Service-Time` is the service time in seconds (default 1.0).
- `POST /v1/files/upload` (multipart/form-data): takes a PostgreSQL connection (the API-key
  check), reads the whole body and answers 201 with Dify's file JSON (`size`: the body's bytes).
- `GET /health`: `{"status": "ok", "pid": …}` without touching the database (as Dify's).

The DSN comes from `E2E_PG_DSN` (libpq syntax). Plain WSGI keeps the install small.

`E2E_RUN_LOG` (a file path, optional): one JSON line per run started and per upload stored,
with its `X-Request-Id` — what the backend really executed, so a soak can prove nothing ran
twice. Each line is one `write` on a file opened for appending: it survives a SIGKILL of the
worker a moment later, and every worker (and every restarted gunicorn) shares the file.
"""

import json
import os
import time
import uuid

import psycopg

DSN = os.environ.get("E2E_PG_DSN", "")
RUN_LOG = os.environ.get("E2E_RUN_LOG", "")


def _record(kind, environ, streaming=False):
    """Appends what was started to the run log, when one is set (see the module doc)."""
    if not RUN_LOG:
        return
    line = json.dumps({
        "id": environ.get("HTTP_X_REQUEST_ID"),
        "kind": kind,
        "path": environ.get("PATH_INFO", ""),
        "streaming": streaming,
        "pid": os.getpid(),
        "at": time.time(),
    }) + "\n"
    fd = os.open(RUN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _json(start_response, status, body, headers=()):
    data = json.dumps(body).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))] + list(headers),
    )
    return [data]


def _error(start_response, status, code, message):
    """Dify's error envelope."""
    number = int(status.split()[0])
    return _json(start_response, status, {"code": code, "message": message, "status": number})


# Dify's answer to an exception nothing in the endpoint handled (Flask-RESTx's handle_error):
# json.dumps with its default separators, then a newline.
UNHANDLED_ERROR = (json.dumps({"message": "Internal Server Error", "code": "unknown", "status": 500}) + "\n").encode()


def _unhandled_error(start_response):
    start_response(
        "500 INTERNAL SERVER ERROR",
        [("Content-Type", "application/json"), ("Content-Length", str(len(UNHANDLED_ERROR)))],
    )
    return [UNHANDLED_ERROR]


def _read_body(environ):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    return json.loads(raw or b"{}")


def _frame(event, **fields):
    payload = {"event": event, **fields}
    return ("data: " + json.dumps(payload) + "\n\n").encode()


def _stream(conn, service_time, events, ids):
    """The SSE body; the connection is held until the last frame (or the client leaving)."""
    try:
        yield _frame("workflow_started", data={"id": ids["run"], "created_at": int(time.time())}, **ids)
        step = service_time / max(events, 1)
        for i in range(events):
            conn.execute("SELECT pg_sleep(%s)", (step,))
            yield _frame("node_finished", data={"id": str(uuid.uuid4()), "index": i + 1, "status": "succeeded"}, **ids)
        yield _frame(
            "workflow_finished",
            data={"id": ids["run"], "status": "succeeded", "outputs": {}, "elapsed_time": service_time},
            **ids,
        )
    finally:
        conn.close()


def _run(environ, start_response):
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if not auth.startswith("Bearer app-"):
        return _error(
            start_response, "401 UNAUTHORIZED", "unauthorized",
            "Authorization header must be provided and start with 'Bearer'",
        )
    try:
        body = _read_body(environ)
    except ValueError:
        return _error(start_response, "400 BAD REQUEST", "invalid_param", "body is not JSON")
    try:
        service_time = float(environ.get("HTTP_X_SERVICE_TIME") or 1.0)
        events = int(environ.get("HTTP_X_EVENTS") or 3)
    except ValueError:
        return _error(start_response, "400 BAD REQUEST", "invalid_param", "bad X-Service-Time or X-Events")
    ids = {"task_id": str(uuid.uuid4()), "workflow_run_id": str(uuid.uuid4())}
    ids["run"] = ids["workflow_run_id"]
    try:
        # Dify takes a pooled connection at the start of the request (the app key lookup)
        # and keeps it until teardown; a fresh connection per run makes PostgreSQL's own
        # max_connections the limit, which is what the tests exercise.
        conn = psycopg.connect(DSN, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:
        return _unhandled_error(start_response)
    streaming = body.get("response_mode") == "streaming"
    # The run exists from here on (Dify creates its workflow_run now).
    _record("run", environ, streaming)
    if streaming:
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return _stream(conn, service_time, events, ids)
    try:
        conn.execute("SELECT pg_sleep(%s)", (service_time,))
    except psycopg.OperationalError as e:
        return _error(
            start_response, "500 INTERNAL SERVER ERROR", "internal_server_error",
            f"(psycopg.OperationalError) {str(e).strip()}",
        )
    finally:
        conn.close()
    run = ids.pop("run")
    return _json(
        start_response, "200 OK",
        {
            **ids,
            "data": {
                "id": run,
                "status": "succeeded",
                "outputs": {"app": auth[len("Bearer "):]},
                "elapsed_time": service_time,
                "created_at": int(time.time()),
            },
        },
    )


def _upload(environ, start_response):
    """Dify's `POST /v1/files/upload`: the file is stored once its body is complete."""
    if not environ.get("CONTENT_TYPE", "").lower().startswith("multipart/form-data"):
        return _error(start_response, "400 BAD REQUEST", "no_file_uploaded", "Please upload your file.")
    try:
        conn = psycopg.connect(DSN, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:
        return _unhandled_error(start_response)
    try:
        stream = environ["wsgi.input"]
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        head, size = b"", 0
        while length < 0 or size < length:
            want = 65536 if length < 0 else min(65536, length - size)
            chunk = stream.read(want)
            if not chunk:
                break
            if len(head) < 16384:
                head += chunk[: 16384 - len(head)]
            size += len(chunk)
        if 0 <= length != size:
            return _error(start_response, "400 BAD REQUEST", "invalid_param", "incomplete request body")
    finally:
        conn.close()
    text = head.decode("latin-1")
    marker = text.lower().find('filename="')
    if marker < 0:
        return _error(start_response, "400 BAD REQUEST", "no_file_uploaded", "Please upload your file.")
    name = text[marker + len('filename="'):].split('"', 1)[0]
    _record("upload", environ)
    return _json(
        start_response, "201 CREATED",
        {
            "id": str(uuid.uuid4()),
            "name": name,
            "size": size,
            "extension": name.rsplit(".", 1)[-1].lower() if "." in name else "",
            "mime_type": "application/octet-stream",
            "created_by": str(uuid.uuid4()),
            "created_at": int(time.time()),
        },
    )


def app(environ, start_response):
    """The WSGI entry point (`gunicorn app:app`)."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    if path == "/health" and method == "GET":
        return _json(start_response, "200 OK", {"status": "ok", "pid": os.getpid()})
    if path == "/v1/workflows/run":
        if method != "POST":
            return _error(start_response, "405 METHOD NOT ALLOWED", "method_not_allowed", "use POST")
        return _run(environ, start_response)
    if path == "/v1/files/upload":
        if method != "POST":
            return _error(start_response, "405 METHOD NOT ALLOWED", "method_not_allowed", "use POST")
        return _upload(environ, start_response)
    return _error(start_response, "404 NOT FOUND", "not_found", "The requested URL was not found on the server.")
