"""Node <-> Python envelopes: the Node package (clients/node, only node:crypto) seals what the
Python helpers open and opens what they seal, and its own `node --test` suite passes (it checks
the same shared vectors). Skipped without `node`, except where REQUIRE_NODE_TESTS is set
(.ci/run sets it: CI always runs these)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from smsgw_client.envelope import EnvelopeError, decrypt, decrypt_bytes, encrypt, encrypt_bytes

NODE_PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "node"
NODE = shutil.which("node")

if NODE is None and os.environ.get("REQUIRE_NODE_TESTS"):
    raise RuntimeError("REQUIRE_NODE_TESTS is set but `node` is not on the PATH")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

TEXTS = ["hola mundo", "", "Ваш код 🔐 424242 ✅", "你好，世界", "x" * 1600, "line\nbreak\ttab"]
DATA = [b"\x00\x01\x02", bytes(range(256)), b""]
PASSPHRASE = "a passphrase shared by both languages ✓"


def _node(batch: list[dict[str, str]]) -> list[dict[str, Any]]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(NODE_PACKAGE / "bin" / "envelope-harness.js")],
        input=json.dumps(batch), capture_output=True, text=True, timeout=120, check=True,
    )
    result: list[dict[str, Any]] = json.loads(done.stdout)
    assert len(result) == len(batch)
    return result


def test_node_seals_and_python_opens() -> None:
    batch = [{"op": "encrypt", "passphrase": PASSPHRASE, "input": t} for t in TEXTS]
    batch += [{"op": "encrypt_bytes", "passphrase": PASSPHRASE, "input": d.hex()} for d in DATA]
    out = _node(batch)
    assert [decrypt(PASSPHRASE, o["output"]) for o in out[: len(TEXTS)]] == TEXTS
    assert [decrypt_bytes(PASSPHRASE, o["output"]) for o in out[len(TEXTS) :]] == DATA
    with pytest.raises(EnvelopeError):
        decrypt("another passphrase", out[0]["output"])


def test_python_seals_and_node_opens() -> None:
    batch = [{"op": "decrypt", "passphrase": PASSPHRASE, "input": encrypt(PASSPHRASE, t)} for t in TEXTS]
    batch += [{"op": "decrypt_bytes", "passphrase": PASSPHRASE, "input": encrypt_bytes(PASSPHRASE, d)} for d in DATA]
    out = _node(batch)
    assert [o["output"] for o in out[: len(TEXTS)]] == TEXTS
    assert [bytes.fromhex(o["output"]) for o in out[len(TEXTS) :]] == DATA


def test_both_refuse_the_same_inputs_for_the_same_reasons() -> None:
    sealed = encrypt(PASSPHRASE, "secret")
    cases = [("another passphrase", sealed), (PASSPHRASE, sealed[:-4]), (PASSPHRASE, "not base64!"),
             (PASSPHRASE, ""), (PASSPHRASE, encrypt_bytes(PASSPHRASE, b"\xff\xfe"))]
    out = _node([{"op": "decrypt", "passphrase": p, "input": e} for p, e in cases])
    for (passphrase, envelope), answer in zip(cases, out, strict=True):
        with pytest.raises(EnvelopeError) as caught:
            decrypt(passphrase, envelope)
        assert answer == {"error": caught.value.reason}


def test_every_invalid_vector_is_refused_alike() -> None:
    vectors = json.loads((NODE_PACKAGE.parent / "vectors" / "smsgw1.json").read_text(encoding="utf-8"))
    cases = vectors["invalid"]
    out = _node([{"op": "decrypt", "passphrase": c["passphrase"], "input": c["envelope"]} for c in cases])
    assert [o.get("error") for o in out] == [c["reason"] for c in cases]


def test_the_node_package_suite_passes() -> None:
    assert NODE is not None
    done = subprocess.run([NODE, "--test"], cwd=NODE_PACKAGE, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
