"""mde-offboard, the Python peer: the generic route of the contract
(`POST /v1/offboard`), written the way most teams would write it.

One file, boto3 for Secrets Manager, urllib for Entra ID and Defender,
`logging` for the logs. Run by awslambdaric (`bootstrap`), handler
`app.handler`, behind an API Gateway HTTP API (payload format 2.0).

Same checks and caches as the Rust function: Standard Webhooks signature,
body validation, secret cached for SECRET_TTL_SECONDS, token cached until
5 minutes before expiry (one refresh on a 401), 429 waited out when it fits
before the deadline, 5xx and network errors retried three times with
jittered backoff. Not ported: the other routes (webhook sources, action
polling), the client-side rate limiter and the init-time warm-up; devices
are handled one after the other (the Rust one does 4 at a time).
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime

import boto3
import botocore.exceptions

logger = logging.getLogger()
logger.setLevel(logging.INFO)

# --- configuration, read once at init --------------------------------------

CLOUDS = {
    "commercial": ("https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com",
                   "https://api.securitycenter.microsoft.com/.default"),
    "gcc": ("https://api-gcc.securitycenter.microsoft.us", "https://login.microsoftonline.com",
            "https://api-gcc.securitycenter.microsoft.us/.default"),
    "gcc-high": ("https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us",
                 "https://api-gov.securitycenter.microsoft.us/.default"),
    "dod": ("https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us",
            "https://api-gov.securitycenter.microsoft.us/.default"),
}


def _env_bool(name):
    value = os.environ.get(name, "false").strip().lower()
    if value not in ("true", "1", "yes", "false", "0", "no"):
        raise ValueError(f"{name}: '{value}' is not true or false")
    return value in ("true", "1", "yes")


def _env_int(name, default, maximum):
    raw = os.environ.get(name, str(default)).strip()
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ValueError(f"{name}: '{raw}' is not a whole number between 1 and {maximum}")
    return int(raw)


SECRET_ID = os.environ["SECRET_ID"]
_cloud_name = os.environ.get("MDE_CLOUD", "commercial").strip().lower()
if _cloud_name not in CLOUDS:
    raise ValueError(f"MDE_CLOUD: '{_cloud_name}' is not commercial, gcc, gcc-high or dod")
_cloud = CLOUDS[_cloud_name]
MDE_API_URL = os.environ.get("MDE_API_URL", _cloud[0]).strip().rstrip("/")
MDE_LOGIN_URL = os.environ.get("MDE_LOGIN_URL", _cloud[1]).strip().rstrip("/")
MDE_SCOPE = os.environ.get("MDE_SCOPE", _cloud[2]).strip()
DRY_RUN = _env_bool("DRY_RUN")
MAX_DEVICES = _env_int("MAX_DEVICES", 25, 1000)
SECRET_TTL_SECONDS = _env_int("SECRET_TTL_SECONDS", 300, 86400)
PROTECTED_TAGS = {t.strip().lower() for t in os.environ.get("PROTECTED_TAGS", "").split(",") if t.strip()}

MAX_BODY_BYTES = 256 * 1024
TOLERANCE_SECONDS = 300
DEADLINE_MARGIN = 1.5         # seconds kept back before the Lambda deadline
MAX_CALL_TIMEOUT = 10.0       # no single HTTP call takes longer
TOKEN_EARLY_REFRESH = 300     # refresh tokens 5 minutes before they expire
MAX_COMMENT_CHARS = 1000
MAX_TICKET_CHARS = 256
MAX_DEVICE_CHARS = 255
RETRYABLE_RETRY_AFTER = 10    # Retry-After for 5xx, network and deadline failures

# Windows platforms the offboard API refuses; Windows 10 needs build 15063 (1703).
LEGACY_WINDOWS = {"windows7", "windows8", "windows8.1", "windowsserver2008r2", "windowsserver2012"}
MIN_WINDOWS10_BUILD = 15063

# Created once per container, reused by warm invocations. boto3 reads
# AWS_ENDPOINT_URL_SECRETS_MANAGER by itself.
secrets_client = boto3.client("secretsmanager")

_secret_cache = {"value": None, "fetched_at": 0.0}
_token_cache = {"token": None, "refresh_at": 0.0, "made_for": None}


# --- errors ------------------------------------------------------------------

class ApiError(Exception):
    """An error answered as {"error": {"code", "message"}}."""

    def __init__(self, status, code, message, retry_after=None, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message if message.endswith(".") else message + "."
        self.retry_after = retry_after
        self.headers = headers or {}


class DefenderError(Exception):
    """A Defender call that did not succeed. `retry_after` is set when a
    later retry of the whole request can cure it (the answer becomes 503)."""

    def __init__(self, message, status=None, code=None, retry_after=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


def response(status, body, headers=None):
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def error_response(e):
    headers = dict(e.headers)
    if e.retry_after is not None:
        headers["retry-after"] = str(e.retry_after)
    return response(e.status, {"error": {"code": e.code, "message": e.message}}, headers)


# --- time ----------------------------------------------------------------------

class Deadline:
    """The Lambda deadline, less a margin for writing the answer."""

    def __init__(self, context):
        remaining_ms = context.get_remaining_time_in_millis() if context else 28000
        self.at = time.monotonic() + remaining_ms / 1000.0

    def usable(self):
        return self.at - time.monotonic() - DEADLINE_MARGIN

    def fits(self, seconds):
        return seconds <= self.usable()

    def call_timeout(self):
        left = self.usable()
        return min(left, MAX_CALL_TIMEOUT) if left >= 0.05 else None


def parse_retry_after(value):
    """Seconds from a Retry-After header (seconds or an HTTP date); 5 if absent."""
    if not value:
        return 5.0
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 5.0


def retry_after_header(seconds):
    whole = int(seconds)
    return whole + 1 if seconds > whole or whole == 0 else whole


# --- the secret ----------------------------------------------------------------

def parse_secret(text):
    """Validates the SecretString; errors name the key, never a value."""
    def bad(msg):
        return ApiError(500, "bad_secret", f"the function's secret is not usable: {msg}")

    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        raise bad("the secret is not a JSON object")
    if not isinstance(data, dict):
        raise bad("the secret is not a JSON object")
    secret = {}
    for key in ("tenant_id", "client_id", "client_secret"):
        if key not in data:
            raise bad(f"the secret has no key '{key}'")
        if not isinstance(data[key], str):
            raise bad(f"the secret's key '{key}' must be a string")
        if not data[key].strip():
            raise bad(f"the secret's key '{key}' is empty")
        secret[key] = data[key].strip()
    webhook_secrets = {}
    raw = data.get("webhook_secrets")
    if raw is not None and not isinstance(raw, dict):
        raise bad("the secret's key 'webhook_secrets' must be an object")
    for name, value in (raw or {}).items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise bad(f"the secret's key 'webhook_secrets.{name}' must be a string or a list of strings")
        webhook_secrets[name] = [v for v in values if v]
    secret["webhook_secrets"] = webhook_secrets
    return secret


def get_secret():
    cached = _secret_cache["value"]
    if cached is not None and time.monotonic() - _secret_cache["fetched_at"] < SECRET_TTL_SECONDS:
        return cached
    try:
        result = secrets_client.get_secret_value(SecretId=SECRET_ID)
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "unknown")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
        if status < 500 and code != "ThrottlingException":
            raise ApiError(500, "secret_refused", f"Secrets Manager refused the secret: {code}")
        raise ApiError(503, "secret_unavailable", f"Secrets Manager is unavailable: {code}",
                       retry_after=RETRYABLE_RETRY_AFTER)
    except botocore.exceptions.BotoCoreError:
        raise ApiError(503, "secret_unavailable", "Secrets Manager is unavailable: could not reach the service",
                       retry_after=RETRYABLE_RETRY_AFTER)
    if "SecretString" not in result:
        raise ApiError(500, "bad_secret", "the function's secret is not usable: the secret has no "
                       "SecretString (binary secrets are not supported)")
    secret = parse_secret(result["SecretString"])
    _secret_cache["value"] = secret
    _secret_cache["fetched_at"] = time.monotonic()
    return secret


# --- Standard Webhooks ---------------------------------------------------------

def webhook_key(secret):
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):].strip(), validate=True)
        except ValueError:
            return secret.encode()
    return secret.encode()


def verify_signature(headers, body, secrets):
    def unauthorized(reason):
        return ApiError(401, "unauthorized", f"the signature could not be verified: {reason}")

    if not secrets:
        raise unauthorized("no webhook secret is configured for 'generic'")
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    for name, value in (("webhook-id", msg_id), ("webhook-timestamp", timestamp),
                        ("webhook-signature", signature)):
        if value is None:
            raise unauthorized(f"missing header {name}")
    if not msg_id:
        raise unauthorized("header webhook-id is malformed")
    try:
        ts = int(timestamp.strip())
    except ValueError:
        raise unauthorized("header webhook-timestamp is malformed")
    if abs(time.time() - ts) > TOLERANCE_SECONDS:
        raise unauthorized("webhook-timestamp is more than 300 seconds from now")
    candidates = []
    for entry in signature.split():
        if entry.startswith("v1,"):
            try:
                candidates.append(base64.b64decode(entry[3:], validate=True))
            except ValueError:
                pass  # other versions and junk entries are skipped, not fatal
    signed = f"{msg_id}.{ts}.".encode() + body
    matched = False
    for secret in secrets:
        expected = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise unauthorized("no signature matches")


# --- the body ------------------------------------------------------------------

def has_control(s):
    return any(unicodedata.category(c) == "Cc" for c in s)


def missing(field):
    return ApiError(400, "missing_field", f"field '{field}' is required")


def wrong_type(field, expected):
    return ApiError(400, "wrong_type", f"field '{field}' must be {expected}")


def invalid(field, reason):
    return ApiError(422, "invalid_value", f"field '{field}' {reason}")


def text_field(body, field, max_chars):
    value = body.get(field)
    if value is None:
        raise missing(field)
    if not isinstance(value, str):
        raise wrong_type(field, "a string")
    value = value.strip()
    if not value:
        raise invalid(field, "must not be empty")
    if len(value) > max_chars:
        raise invalid(field, f"must be at most {max_chars} characters")
    if has_control(value):
        raise invalid(field, "must not contain control characters")
    return value


def parse_device(field, value):
    """40 hex characters is a machine id (lowercased), anything else a name."""
    value = value.strip()
    if len(value) == 40 and all(c in "0123456789abcdefABCDEF" for c in value):
        return {"given": value, "id": value.lower(), "name": None}
    if not value:
        raise invalid(field, "must not be empty")
    if len(value) > MAX_DEVICE_CHARS:
        raise invalid(field, "is longer than 255 characters")
    if any(has_control(c) or c.isspace() for c in value):
        raise invalid(field, "must not contain spaces or control characters")
    return {"given": value, "id": None, "name": value}


def parse_body(body):
    if not isinstance(body, dict):
        raise wrong_type("body", "a JSON object")
    ticket = text_field(body, "ticket", MAX_TICKET_CHARS)
    comment = text_field(body, "comment", MAX_COMMENT_CHARS)
    devices = body.get("devices")
    if devices is None:
        raise missing("devices")
    if not isinstance(devices, list):
        raise wrong_type("devices", "an array of strings")
    parsed = []
    for i, d in enumerate(devices):
        if not isinstance(d, str):
            raise wrong_type(f"devices[{i}]", "a string")
        parsed.append(parse_device(f"devices[{i}]", d))
    if not parsed:
        raise invalid("devices", "must name at least one device")
    dry_run = body.get("dry_run")
    if dry_run is not None and not isinstance(dry_run, bool):
        raise wrong_type("dry_run", "a boolean")
    mode = body.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise wrong_type("mode", "a string")
    if mode not in (None, "now", "queue"):
        raise invalid("mode", 'must be "now" or "queue"')
    return {"ticket": ticket, "comment": comment, "devices": parsed,
            "dry_run": bool(dry_run), "mode": mode or "now"}


# --- Entra ID token ------------------------------------------------------------

def get_token(secret, deadline):
    made_for = (secret["tenant_id"], secret["client_id"], secret["client_secret"])
    if (_token_cache["token"] and _token_cache["made_for"] == made_for
            and time.monotonic() < _token_cache["refresh_at"]):
        return _token_cache["token"]
    timeout = deadline.call_timeout()
    if timeout is None:
        raise ApiError(503, "login_unavailable", "the login endpoint is unavailable: no time left before the deadline",
                       retry_after=RETRYABLE_RETRY_AFTER)
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials",
        "client_id": secret["client_id"],
        "client_secret": secret["client_secret"],
        "scope": MDE_SCOPE,
    }).encode()
    url = f"{MDE_LOGIN_URL}/{secret['tenant_id']}/oauth2/v2.0/token"
    request = urllib.request.Request(url, data=form, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise ApiError(503, "login_unavailable", f"the login endpoint is unavailable: HTTP {e.code}",
                           retry_after=RETRYABLE_RETRY_AFTER)
        # Only the error code and AADSTS numbers: the description can echo request details.
        try:
            err = json.loads(e.read())
        except ValueError:
            err = {}
        detail = err.get("error") or f"HTTP {e.code}"
        detail += "".join(f" AADSTS{n}" for n in err.get("error_codes") or [])
        raise ApiError(500, "bad_credentials", f"the login endpoint refused the client credentials: {detail}")
    except (urllib.error.URLError, OSError, ValueError):
        raise ApiError(503, "login_unavailable", "the login endpoint is unavailable: could not connect",
                       retry_after=RETRYABLE_RETRY_AFTER)
    try:
        expires_in = int(data.get("expires_in", 3599))
    except (TypeError, ValueError):
        expires_in = 3599
    _token_cache.update(token=data["access_token"], made_for=made_for,
                        refresh_at=time.monotonic() + expires_in - TOKEN_EARLY_REFRESH)
    return data["access_token"]


# --- Defender API --------------------------------------------------------------

def defender_call(method, path, deadline, body=None):
    """One logical call with the contract's retry rules; returns parsed JSON."""
    url = MDE_API_URL + path
    data = json.dumps(body).encode() if body is not None else None
    refreshed = False
    retries = 0
    throttles = 0
    while True:
        try:
            token = get_token(get_secret(), deadline)
        except ApiError as e:
            raise DefenderError(e.message.rstrip("."), retry_after=e.retry_after)
        timeout = deadline.call_timeout()
        if timeout is None:
            raise DefenderError("the Lambda deadline left no time for this call", retry_after=RETRYABLE_RETRY_AFTER)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                raw = resp.read()
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                raise DefenderError("Defender is unavailable: Defender's answer is not the expected JSON",
                                    retry_after=RETRYABLE_RETRY_AFTER)
        except urllib.error.HTTPError as e:
            if e.code == 401 and not refreshed:
                _token_cache["token"] = None  # revoked or expired early: one refresh
                refreshed = True
                continue
            if e.code == 401:
                raise DefenderError("Defender answered 401 with a fresh token: the app registration "
                                    "is not accepted by this tenant's API", status=401)
            if e.code == 403:
                raise DefenderError("Defender answered 403: the application lacks the permission "
                                    "(Machine.Offboard, Machine.Read.All) or admin consent", status=403)
            if e.code == 404:
                raise DefenderError("Defender does not know this machine or action", status=404)
            if e.code == 429:
                wait = parse_retry_after(e.headers.get("Retry-After"))
                logger.warning(json.dumps({"message": "Defender throttled", "method": method,
                                           "retry_after_s": wait}))
                throttles += 1
                if throttles > 3 or not deadline.fits(wait):
                    raise DefenderError(f"Defender is throttling; retry after {int(wait)}s", status=429,
                                        retry_after=wait)
                time.sleep(wait)
                continue
            if e.code < 500:
                try:
                    code = (json.loads(e.read()).get("error") or {}).get("code") or "Unknown"
                except (ValueError, AttributeError):
                    code = "Unknown"
                raise DefenderError(f"Defender refused the call: {code} (HTTP {e.code})", status=e.code, code=code)
            transient = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            transient = "timed out" if "timed out" in str(e) else "network error"
            logger.warning(json.dumps({"message": "Defender call failed", "method": method, "error": transient}))
        # 5xx and network errors: 100-200, 200-400, 400-800 ms, never past the deadline.
        if retries < 3:
            half = 0.1 * (2 ** retries)
            wait = half + half * random.random()
            if deadline.fits(wait):
                retries += 1
                time.sleep(wait)
                continue
        raise DefenderError(f"Defender is unavailable: {transient}", retry_after=RETRYABLE_RETRY_AFTER)


def policy_refusal(machine):
    """('protected' | 'unsupported_os', detail) or None. Tags win."""
    for tag in machine.get("machineTags") or []:
        if tag.strip().lower() in PROTECTED_TAGS:
            return "protected", f"the machine carries the protected tag '{tag}'"
    platform = machine.get("osPlatform") or ""
    p = platform.lower()
    build = machine.get("osBuild")
    if (not p.startswith("windows") or p in LEGACY_WINDOWS
            or (p == "windows10" and isinstance(build, int) and build < MIN_WINDOWS10_BUILD)):
        return "unsupported_os", (
            "the offboard API supports Windows 10 1703+, Windows 11 and Windows Server 2019+ "
            "(2012 R2 and 2016 with the unified agent); this machine is "
            + (platform or "of an unknown platform"))
    return None


def offboard_one(device, comment, dry_run, deadline):
    """Resolve, read, check, offboard one device; never raises."""
    result = {"device": device["given"], "machine_id": device["id"], "status": "failed"}
    extra = {"computer_dns_name": "", "retry_after": None}

    def done(status, detail=None, action_id=None, error=None):
        result["status"] = status
        if action_id is not None:
            result["action_id"] = action_id
        if detail is not None:
            result["detail"] = detail
        if error is not None:
            extra["retry_after"] = error.retry_after
        return result, extra

    machine_id = device["id"]
    if machine_id is None:
        name = device["name"]
        query = urllib.parse.quote("computerDnsName eq '" + name.replace("'", "''") + "'", safe="")
        try:
            found = defender_call("GET", f"/api/machines?$filter={query}", deadline).get("value") or []
        except DefenderError as e:
            return done("failed", str(e), error=e)
        # Defender's eq is case-insensitive already; filter again in case it is looser.
        matching = [m for m in found if (m.get("computerDnsName") or "").lower() == name.lower()]
        if not matching:
            return done("not_found", "no machine has this name")
        if len(matching) > 1:
            ids = ", ".join(m.get("id", "") for m in matching)
            return done("ambiguous", f"{len(matching)} machines have this name ({ids}); name one by its machine id")
        machine_id = (matching[0].get("id") or "").lower()
        if len(machine_id) != 40 or any(c not in "0123456789abcdef" for c in machine_id):
            return done("failed", "Defender returned a machine id that is not 40 hex characters")
    result["machine_id"] = machine_id

    try:
        machine = defender_call("GET", f"/api/machines/{machine_id}", deadline)
    except DefenderError as e:
        if e.status == 404:
            return done("not_found", "no machine has this id")
        return done("failed", str(e), error=e)
    extra["computer_dns_name"] = machine.get("computerDnsName") or ""

    refusal = policy_refusal(machine)
    if refusal:
        return done(*refusal)
    if dry_run:
        return done("would_offboard", "dry run: every check passed, nothing was sent")

    try:
        action = defender_call("POST", f"/api/machines/{machine_id}/offboard", deadline, {"Comment": comment})
    except DefenderError as e:
        if e.code == "ActiveRequestAlreadyExists":
            return done("already_pending", "an offboard action for this machine is already pending")
        if e.code == "OsPlatformNotSupported":
            return done("unsupported_os", "Defender refused: the machine's OS platform is not supported "
                                          "by the offboard API")
        if e.status == 404:
            return done("not_found", "Defender no longer knows this machine")
        return done("failed", str(e), error=e)
    return done("offboard_requested", action_id=action.get("id"))


# --- the handler ---------------------------------------------------------------

def offboard(event, context, headers, deadline):
    body = event.get("body") or ""
    try:
        body = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    except ValueError:
        raise ApiError(400, "invalid_json", "the body is not valid base64")
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", "the body is larger than 256 KiB")

    secret = get_secret()
    verify_signature(headers, body, secret["webhook_secrets"].get("generic", []))
    try:
        payload = json.loads(body)
    except ValueError as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}")
    request = parse_body(payload)
    if request["mode"] == "queue":
        raise ApiError(422, "queue_not_configured",
                       "field 'mode' is \"queue\", but no queue is configured (QUEUE_URL)")
    if len(request["devices"]) > MAX_DEVICES:
        raise ApiError(422, "too_many_devices",
                       f"field 'devices' names {len(request['devices'])} devices; at most {MAX_DEVICES} may be "
                       f"named in one request (use \"mode\": \"queue\" for more)")
    dry_run = DRY_RUN or request["dry_run"]
    # A token problem is the operator's, not a device's: answer it once.
    get_token(secret, deadline)

    comment = f"{request['ticket']}: {request['comment']}"
    http = (event.get("requestContext") or {}).get("http") or {}
    results, retry_after, done = [], None, {}
    # Sequential on purpose: simple, and benchmarks name one device.
    for device in request["devices"]:
        key = device["id"] or device["name"].lower()
        if key not in done:  # a device named twice is handled once
            done[key] = offboard_one(device, comment, dry_run, deadline)
        result, extra = done[key]
        result = {**result, "device": device["given"]}
        results.append(result)
        if result["status"] == "failed" and extra["retry_after"] is not None:
            retry_after = max(retry_after or 0, extra["retry_after"])
        logger.info(json.dumps({
            "event": "device_outcome",
            "function_request_id": context.aws_request_id if context else "",
            "source": "generic",
            "ticket": request["ticket"],
            "device": result["device"],
            "machine_id": result["machine_id"] or "",
            "computer_dns_name": extra["computer_dns_name"],
            "status": result["status"],
            "action_id": result.get("action_id", ""),
            "detail": result.get("detail", ""),
            "dry_run": dry_run,
            "source_ip": http.get("sourceIp", ""),
            "webhook_id": headers.get("webhook-id", ""),
        }))

    answer = {"ticket": request["ticket"], "dry_run": dry_run, "results": results}
    if retry_after is not None:
        return response(503, answer, {"retry-after": str(retry_after_header(retry_after))})
    return response(200, answer)


def handler(event, context):
    deadline = Deadline(context)
    http = (event.get("requestContext") or {}).get("http") or {}
    method = http.get("method", "")
    path = event.get("rawPath", "")
    stage = (event.get("requestContext") or {}).get("stage")
    if stage and stage != "$default" and path.startswith(f"/{stage}/") and not path.startswith("/v1/"):
        path = path[len(stage) + 1:]
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    try:
        if path.strip("/") != "v1/offboard":
            raise ApiError(404, "not_found", f"no route for {path}")
        if method != "POST":
            raise ApiError(405, "method_not_allowed", f"method {method} is not allowed on {path}; use POST",
                           headers={"allow": "POST"})
        resp = offboard(event, context, headers, deadline)
    except ApiError as e:
        resp = error_response(e)
        log = logger.warning if e.status >= 500 else logger.info
        log(json.dumps({"message": "request refused", "http_method": method, "path": path,
                        "status": e.status, "code": e.code, "reason": e.message}))
        return resp
    logger.info(json.dumps({"message": "request handled", "http_method": method, "path": path,
                            "status": resp["statusCode"]}))
    return resp
