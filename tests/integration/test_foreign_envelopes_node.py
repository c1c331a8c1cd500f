"""The other gateways' formats across languages: our Node helpers (clients/node/src/foreign.js)
seal what our Python helpers (smsgw_client.foreign) and SMSGate's own Encryptor open and open
what they seal; httpSMS's own cipher (the httpsms npm package) opens what Python seals and
Python opens what it seals. Skipped without `node`, except where REQUIRE_NODE_TESTS is set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from smsgw_client.foreign import httpsms_decrypt, httpsms_encrypt, smsgate_decrypt, smsgate_encrypt

HARNESS = Path(__file__).resolve().parents[2] / "clients" / "node" / "harness"
NODE = shutil.which("node")

if NODE is None and os.environ.get("REQUIRE_NODE_TESTS"):
    raise RuntimeError("REQUIRE_NODE_TESTS is set but `node` is not on the PATH")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

TEXTS = ["Your code is 424242", "", "+15551234567", "Ваш код 🔐 ✅", "你好，世界", "x" * 1600]
PASSPHRASE = "Password123"


def _node(script: str, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(HARNESS / script)], input=json.dumps(batch), capture_output=True, text=True, timeout=60,
        check=True, cwd=HARNESS,
    )
    result: list[dict[str, Any]] = json.loads(done.stdout)
    assert len(result) == len(batch)
    return result


def test_node_seals_and_python_and_smsgates_encryptor_open() -> None:
    batch = [{"op": "smsgate_encrypt", "passphrase": PASSPHRASE, "input": t, "iterations": 1000} for t in TEXTS]
    batch += [{"op": "httpsms_encrypt", "passphrase": PASSPHRASE, "input": t} for t in TEXTS]
    out = [o["output"] for o in _node("foreign-harness.js", batch)]
    assert [smsgate_decrypt(PASSPHRASE, o) for o in out[: len(TEXTS)]] == TEXTS
    assert [httpsms_decrypt(PASSPHRASE, o) for o in out[len(TEXTS) :]] == TEXTS
    try:
        import Crypto  # noqa: F401  (pycryptodome: what SMSGate's Encryptor needs)
    except ImportError:
        return
    from android_sms_gateway.encryption import Encryptor

    assert [Encryptor(PASSPHRASE, iterations=1000).decrypt(o) for o in out[: len(TEXTS)]] == TEXTS


def test_python_seals_and_node_opens() -> None:
    batch = [{"op": "smsgate_decrypt", "passphrase": PASSPHRASE, "input": smsgate_encrypt(PASSPHRASE, t, iterations=1000)} for t in TEXTS]
    batch += [{"op": "httpsms_decrypt", "passphrase": PASSPHRASE, "input": httpsms_encrypt(PASSPHRASE, t)} for t in TEXTS]
    assert [o["output"] for o in _node("foreign-harness.js", batch)] == TEXTS + TEXTS


def test_httpsms_package_and_python_open_each_other() -> None:
    sealed_here = [httpsms_encrypt(PASSPHRASE, t) for t in TEXTS]
    batch = [{"op": "decrypt", "passphrase": PASSPHRASE, "input": s} for s in sealed_here]
    batch += [{"op": "encrypt", "passphrase": PASSPHRASE, "input": t} for t in TEXTS]
    out = [o["output"] for o in _node("httpsms-cipher.js", batch)]
    assert out[: len(TEXTS)] == TEXTS, "httpSMS's cipher opens what Python sealed"
    assert [httpsms_decrypt(PASSPHRASE, o) for o in out[len(TEXTS) :]] == TEXTS, "Python opens what it sealed"
