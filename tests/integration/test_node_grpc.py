"""Node as a client of the real server: proto/ loads in @grpc/proto-loader with includeDirs
[proto] alone, and grpc-js calls health, IssueToken (Basic), ListMessages (Bearer) and gets an
INVALID_ARGUMENT whose google.rpc.BadRequest it decodes (clients/node/harness). Skipped without
`node`, except where REQUIRE_NODE_TESTS is set (CI). clients/node/node_modules comes from
scripts/bootstrap (npm ci)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from smsgw_client import Client
from tests.helpers.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
NODE_PACKAGE = ROOT / "clients" / "node"
NODE = shutil.which("node")

if NODE is None and os.environ.get("REQUIRE_NODE_TESTS"):
    raise RuntimeError("REQUIRE_NODE_TESTS is set but `node` is not on the PATH")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def _node(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    if not (NODE_PACKAGE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node/node_modules is missing: run scripts/bootstrap (it runs npm ci there)")
    return subprocess.run([NODE, *args], cwd=NODE_PACKAGE, input=stdin, capture_output=True, text=True, timeout=120)


def test_node_loads_every_proto_with_only_proto_as_include_dir() -> None:
    done = _node("--test", "test/proto-load.test.js")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The runner's summary ("# pass N", "# fail N"): nothing failed and at least the four tests
    # this was written with ran (more may be added without touching this test).
    summary = {k: int(v) for k, v in re.findall(r"^# (pass|fail|cancelled) (\d+)$", done.stdout, flags=re.M)}
    assert summary.get("fail") == 0 and summary.get("cancelled", 0) == 0, done.stdout[-3000:]
    assert summary["pass"] >= 4, done.stdout[-3000:]


def test_node_calls_the_real_server_and_decodes_error_details(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:
        sent = client.send_message(["+15551234567"], "from python")
    request = {"target": server.grpc_target, "username": "admin", "password": server.admin_password,
               "bad_phone": "5551234567"}
    done = _node("harness/grpc-harness.js", stdin=json.dumps(request))
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, Any] = json.loads(done.stdout)

    assert out["health"] == {"status": "SERVING"}
    token = out["token"]
    assert token["token_type"] == "Bearer" and token["access_token"].count(".") == 2
    assert isinstance(token["access_expires_at"]["seconds"], str)  # longs: String
    # The TTL asked for (600 s), measured against the token's own issue time, not this clock.
    claims = json.loads(base64.urlsafe_b64decode(token["access_token"].split(".")[1] + "=="))
    assert int(token["access_expires_at"]["seconds"]) == claims["exp"] == claims["iat"] + 600

    [message] = out["list"]["messages"]
    assert message["id"] == sent.id
    assert message["state"] == "PENDING"  # enums: String
    assert message["content"] == "text_message"  # oneofs: true
    assert message["text_message"]["text"] == "from python"
    assert message["device_id"] == ""  # defaults: true

    error = out["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    status = error["status"]
    assert status["code"] == 3 and status["message"] == error["details"]
    bad_requests = [d for d in status["details"] if d["@type"] == "google.rpc.BadRequest"]
    assert [v["field"] for v in bad_requests[0]["field_violations"]] == ["phone_numbers[0]"]


def test_the_readme_node_snippet_runs_as_written(server: ServerProcess, tmp_path: Path) -> None:
    """README "For client developers" Node block, with only the target and the credentials
    swapped in; run from the repository root (includeDirs ["proto"]) with clients/node's modules."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [snippet] = re.findall(r"- Other languages:.*?```js\n(.*?)```", readme, flags=re.S)
    assert snippet.count('"127.0.0.1:50051"') == 1 and snippet.count('"alice:password"') == 1
    snippet = snippet.replace('"127.0.0.1:50051"', json.dumps(server.grpc_target))
    snippet = snippet.replace('"alice:password"', json.dumps(f"admin:{server.admin_password}"))
    snippet += '\nconsole.log(JSON.stringify({ token_type: tokens.token_type, listed: page.messages.length }));\n'
    (tmp_path / "node_modules").symlink_to(NODE_PACKAGE / "node_modules")
    (tmp_path / "snippet.mjs").write_text(snippet, encoding="utf-8")
    _node("--version")  # fails clearly when node_modules is missing
    assert NODE is not None
    done = subprocess.run([NODE, str(tmp_path / "snippet.mjs")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "field: 'phone_numbers[0]'" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"token_type": "Bearer", "listed": 0}
