"""Vigie's NGSI-LD face as an integrator meets it, with a client that is not ours: `ngsildclient`
(PyPI, Apache-2.0), installed by `deploy/install-tools.sh --browser` into `.tools/ngsild-venv`.

Reads a plan from stdin: {"host", "port", "context", "sessions": [{"name", "token", "tenant",
"steps": [{"name", "kind", ...}]}]}. Each session is one client (its token, and its tenant when
given); each step is one call. Kinds:
- "query": the client's `query` (it counts, then pages): {"type", "q"} -> the entities (dicts);
- "count": the client's `count`: {"type", "q"} -> a number;
- "get": the client's `get`: {"id"} -> the entity;
- "types": the client's `types.list()` -> the type names;
- "raw": a GET through the client's session (auth and tenant as the session's): {"path", "params",
  "headers"} -> {"status", "headers", "body"}.
When the client cannot connect, `_connect` says why and only raw steps run. A call that raises gives {"error": the exception's class, "detail": its text}. Writes
{session: {step: result}} as JSON to stdout.
"""

import json
import sys

import requests
from ngsildclient import Client


class Bearer(requests.auth.AuthBase):
    def __init__(self, token):
        self.token = token

    def __call__(self, request):
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        return request


class Unconnected:
    """What a session's raw steps need when the library would not connect."""

    def __init__(self, token):
        self.session = requests.Session()
        self.session.auth = Bearer(token)


def run_step(client, base, context, step):
    kind = step["kind"]
    if kind == "query":
        return [e.to_dict() for e in client.query(type=step.get("type"), q=step.get("q"), ctx=context)]
    if kind == "count":
        return client.count(type=step.get("type"), q=step.get("q"))
    if kind == "get":
        return client.get(step["id"], ctx=context, asdict=True)
    if kind == "types":
        return client.types.list()
    if kind == "raw":
        headers = {"Content-Type": None}
        headers.update(step.get("headers", {}))
        response = client.session.get(base + step["path"], params=step.get("params", {}), headers=headers)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        wanted = ["Content-Type", "Link", "NGSILD-Results-Count", "NGSILD-Tenant", "WWW-Authenticate"]
        return {
            "status": response.status_code,
            "headers": {h: response.headers.get(h) for h in wanted if h in response.headers},
            "body": body,
        }
    raise ValueError(f"unknown step kind {kind}")


def main():
    plan = json.load(sys.stdin)
    base = f"http://{plan['host']}:{plan['port']}"
    results = {}
    for session in plan["sessions"]:
        out = results.setdefault(session["name"], {})
        try:
            client = Client(
                hostname=plan["host"],
                port=plan["port"],
                tenant=session.get("tenant"),
                tenant_autocreate=False,
                custom_auth=Bearer(session.get("token")),
                verbose=False,
            )
        except Exception as e:  # noqa: BLE001: the test reads what failed
            # The library refuses to start when its first query fails (no token, a role that
            # reads nothing): the raw steps still run, on a plain session.
            out["_connect"] = {"error": type(e).__name__, "detail": str(e)}
            client = Unconnected(session.get("token"))
        for step in session["steps"]:
            try:
                out[step["name"]] = run_step(client, base, plan["context"], step)
            except Exception as e:  # noqa: BLE001
                out[step["name"]] = {"error": type(e).__name__, "detail": str(e)}
    json.dump(results, sys.stdout, default=str)


if __name__ == "__main__":
    main()
