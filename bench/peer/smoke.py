#!/usr/bin/env python3
"""End-to-end smoke test of the Python peer under a Lambda Runtime API.

Starts moto's server (Secrets Manager) and creates the secret, runs a fake
Defender + Entra ID login and a minimal Runtime API in threads, starts
`bootstrap` (awslambdaric + app.handler) against them, and sends signed
API Gateway HTTP API (2.0) events:

  1. the machine by id: must answer 200 with `offboard_requested`;
  2. the same again, warm: same answer, and no second token request
     (the token and the secret are cached);
  3. a wrong signature: must answer 401 `unauthorized`.

Prints every answer, exits non-zero on any failure, and always stops the
processes it started. Needs python3 with boto3, awslambdaric and
moto[server] (`moto_server` on PATH).

    python3 bench/peer/smoke.py
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import boto3

HERE = os.path.dirname(os.path.abspath(__file__))

TENANT_ID = "00000000-0000-0000-0000-000000000000"
CLIENT_ID = "11111111-1111-1111-1111-111111111111"
CLIENT_SECRET = "fake-client-secret-Q8~never-log-me"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_NAME = "mde-offboard/peer-smoke"
MACHINE_ID = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
ACTION_ID = "5382f7ea-7557-4ab7-9782-d50480024a4e"
TOKEN = "t1"
SCOPE = "https://api.securitycenter.microsoft.com/.default"
STARTUP_TIMEOUT = 20.0
INVOKE_TIMEOUT = 30.0


class SmokeFailure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise SmokeFailure(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=STARTUP_TIMEOUT):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SmokeFailure(f"moto_server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SmokeFailure(f"nothing listens on port {port} after {timeout}s")


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client hanging up (the peer being stopped) is not news


class JsonHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # awslambdaric's client keeps connections open
    # One write per answer and no Nagle: otherwise headers and body go out as
    # two segments and delayed ACKs add ~40 ms to every call.
    wbufsize = 65536
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status, body, headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


# --- fake Defender and Entra ID login -----------------------------------------

class FakeMicrosoft:
    """One server for both hosts: the token endpoint and the machine API."""

    def __init__(self):
        self.calls = []  # (method, path)
        self.lock = threading.Lock()
        fake = self

        class Handler(JsonHandler):
            def do_POST(self):
                body = self.read_body()
                fake.record("POST", self.path)
                if self.path == f"/{TENANT_ID}/oauth2/v2.0/token":
                    form = urllib.parse.parse_qs(body.decode())
                    expected = {"grant_type": ["client_credentials"], "client_id": [CLIENT_ID],
                                "client_secret": [CLIENT_SECRET], "scope": [SCOPE]}
                    if form != expected:
                        return self.send_json(401, {"error": "invalid_client", "error_codes": [7000215]})
                    return self.send_json(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": TOKEN})
                if not fake.authorized(self):
                    return self.send_json(401, {"error": {"code": "Unauthorized", "message": "bad token"}})
                if self.path == f"/api/machines/{MACHINE_ID}/offboard":
                    try:
                        comment = json.loads(body).get("Comment", "")
                    except ValueError:
                        comment = ""
                    if not comment.startswith("INC0012345: "):
                        return self.send_json(400, {"error": {"code": "InvalidRequestBody", "message": comment}})
                    return self.send_json(201, {"id": ACTION_ID, "type": "Offboard", "status": "Pending"})
                return self.send_json(404, {"error": {"code": "ResourceNotFound", "message": "no such path"}})

            def do_GET(self):
                fake.record("GET", self.path)
                if not fake.authorized(self):
                    return self.send_json(401, {"error": {"code": "Unauthorized", "message": "bad token"}})
                if self.path == f"/api/machines/{MACHINE_ID}":
                    return self.send_json(200, {"id": MACHINE_ID, "computerDnsName": "laptop-17.contoso.com",
                                                "osPlatform": "Windows11", "machineTags": []})
                return self.send_json(404, {"error": {"code": "ResourceNotFound", "message": "no such machine"}})

            def do_HEAD(self):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def record(self, method, path):
        with self.lock:
            self.calls.append((method, path))

    @staticmethod
    def authorized(request):
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    def token_requests(self):
        with self.lock:
            return sum(1 for m, p in self.calls if p.endswith("/oauth2/v2.0/token"))


# --- minimal Lambda Runtime API -----------------------------------------------

class FakeRuntimeApi:
    """Hands out queued events on /next and records the answers."""

    def __init__(self):
        self.events = queue.Queue()
        self.answers = queue.Queue()  # (kind, request_id, body)
        self.stopping = threading.Event()
        api = self

        class Handler(JsonHandler):
            def do_GET(self):
                if self.path != "/2018-06-01/runtime/invocation/next":
                    return self.send_json(404, {"errorMessage": "unknown path"})
                while not api.stopping.is_set():
                    try:
                        request_id, event = api.events.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    deadline_ms = int(time.time() * 1000) + 30_000
                    return self.send_json(200, event, {
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn":
                            "arn:aws:lambda:us-east-1:123456789012:function:mde-offboard-peer",
                        "Lambda-Runtime-Trace-Id":
                            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
                    })
                self.close_connection = True

            def do_POST(self):
                body = self.read_body()
                parts = self.path.split("/")
                # /2018-06-01/runtime/invocation/{id}/response|error, /2018-06-01/runtime/init/error
                if self.path == "/2018-06-01/runtime/init/error":
                    api.answers.put(("init_error", None, body))
                elif len(parts) == 6 and parts[3] == "invocation" and parts[5] in ("response", "error"):
                    api.answers.put((parts[5], parts[4], body))
                else:
                    return self.send_json(404, {"errorMessage": "unknown path"})
                self.send_json(202, {"status": "OK"})

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def invoke(self, event, proc, timeout=INVOKE_TIMEOUT):
        request_id = str(uuid.uuid4())
        self.events.put((request_id, event))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SmokeFailure(f"bootstrap exited with {proc.returncode} before answering")
            try:
                kind, rid, body = self.answers.get(timeout=0.1)
            except queue.Empty:
                continue
            check(kind == "response", f"the runtime reported {kind}: {body.decode(errors='replace')}")
            check(rid == request_id, f"answer for {rid}, expected {request_id}")
            return json.loads(body)
        raise SmokeFailure(f"no answer within {timeout}s")


# --- events --------------------------------------------------------------------

def signed_event(body, secret=WEBHOOK_SECRET):
    msg_id = "msg_" + uuid.uuid4().hex
    ts = int(time.time())
    key = base64.b64decode(secret[len("whsec_"):])
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body.encode(), hashlib.sha256).digest()
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/v1/offboard",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "content-length": str(len(body.encode())),
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            "user-agent": "peer-smoke/1.0",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            "x-forwarded-for": "203.0.113.10",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {"method": "POST", "path": "/v1/offboard", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.10", "userAgent": "peer-smoke/1.0"},
            "requestId": uuid.uuid4().hex[:16] + "=",
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": body,
        "isBase64Encoded": False,
    }


# --- the run -------------------------------------------------------------------

def start_moto():
    port = free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def create_secret(endpoint):
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_secret(Name=SECRET_NAME, SecretString=json.dumps({
        "tenant_id": TENANT_ID,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "webhook_secrets": {"generic": WEBHOOK_SECRET},
    }))


def peer_env(runtime_api, moto_endpoint, microsoft_url):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "AWS_LAMBDA_FUNCTION_NAME": "mde-offboard-peer",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/mde-offboard-peer",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]00000000000000000000000000000000",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "LAMBDA_TASK_ROOT": HERE,
        "_HANDLER": "app.handler",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",  # Lambda sets both; boto3 reads this one
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_endpoint,
        "SECRET_ID": SECRET_NAME,
        "MDE_API_URL": microsoft_url,
        "MDE_LOGIN_URL": microsoft_url,
        "PYTHONDONTWRITEBYTECODE": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


def stop(proc, name):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        print(f"smoke: {name} ignored SIGTERM, killing it", file=sys.stderr)
        proc.kill()
        proc.wait(timeout=5)


def run():
    moto = peer = None
    microsoft = FakeMicrosoft()
    runtime = FakeRuntimeApi()
    servers = [microsoft.server, runtime.server]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    chunks = []
    reader = None
    try:
        moto, moto_port = start_moto()
        wait_for_port(moto_port, moto)
        moto_endpoint = f"http://127.0.0.1:{moto_port}"
        create_secret(moto_endpoint)

        started = time.monotonic()
        peer = subprocess.Popen([os.path.join(HERE, "bootstrap")], cwd="/",
                                env=peer_env(runtime.address, moto_endpoint, microsoft.url),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: peer.stdout.read1(65536), b"")),
                                  daemon=True)
        reader.start()

        body = json.dumps({"ticket": "INC0012345", "comment": "Laptop retired, disk wiped",
                           "devices": [MACHINE_ID]})

        answer = runtime.invoke(signed_event(body), peer)
        cold_ms = (time.monotonic() - started) * 1000
        print("invocation 1 (cold):", json.dumps(answer, indent=2))
        check(answer.get("statusCode") == 200, f"status {answer.get('statusCode')}, expected 200")
        check(answer.get("headers", {}).get("content-type") == "application/json", "content-type is not JSON")
        result = json.loads(answer["body"])
        check(result == {"ticket": "INC0012345", "dry_run": False, "results": [
            {"device": MACHINE_ID, "machine_id": MACHINE_ID, "status": "offboard_requested",
             "action_id": ACTION_ID}]}, f"unexpected body {result}")

        t = time.monotonic()
        answer2 = runtime.invoke(signed_event(body), peer)
        warm_ms = (time.monotonic() - t) * 1000
        print("invocation 2 (warm):", answer2["statusCode"], answer2["body"])
        check(answer2["statusCode"] == 200 and json.loads(answer2["body"]) == result, "warm answer differs")
        check(microsoft.token_requests() == 1, f"{microsoft.token_requests()} token requests, expected 1 (cache)")

        bad = signed_event(body, secret="whsec_" + base64.b64encode(b"not the right key").decode())
        answer3 = runtime.invoke(bad, peer)
        print("invocation 3 (bad signature):", answer3["statusCode"], answer3["body"])
        check(answer3["statusCode"] == 401, f"bad signature answered {answer3['statusCode']}")
        check(json.loads(answer3["body"])["error"]["code"] == "unauthorized", "bad signature code")

        stop(peer, "bootstrap")
        reader.join(timeout=5)
        peer_output = b"".join(chunks)
        for secret in (CLIENT_SECRET, WEBHOOK_SECRET, WEBHOOK_SECRET[len("whsec_"):], f"Bearer {TOKEN}"):
            check(secret.encode() not in peer_output, "the peer logged a secret")
        audit_lines = [l for l in peer_output.decode(errors="replace").splitlines() if "device_outcome" in l]
        check(len(audit_lines) == 2, f"{len(audit_lines)} audit lines, expected 2")
        print(f"smoke: ok (first answer {cold_ms:.0f} ms after start, warm answer {warm_ms:.0f} ms, "
              f"Defender/login calls: {microsoft.calls})")
        return 0
    except Exception as e:  # noqa: BLE001 - any failure fails the smoke test
        print(f"smoke: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        stop(peer, "bootstrap")
        stop(moto, "moto_server")
        runtime.stopping.set()
        for server in servers:
            server.shutdown()
            server.server_close()
        if reader is not None:
            reader.join(timeout=5)
            print("--- peer output ---")
            print(b"".join(chunks).decode(errors="replace").rstrip())


if __name__ == "__main__":
    sys.exit(run())
