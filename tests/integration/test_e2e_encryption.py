"""End-to-end encryption through the real server: the client seals, the server stores and
forwards only the envelope (its database row, every log line at DEBUG and the webhook payload
hold ciphertext only), the reference phone opens it and its modem gets the plaintext; an SMS
the phone receives is sealed before it leaves the phone and opened by the client helper."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from smsgw.v1 import common_pb2
from smsgw_client import Client
from smsgw_client.envelope import check_envelope, decrypt, decrypt_bytes, encrypt

from tests.helpers.phones import GatedModem, start_phones
from tests.helpers.server import PRIVATE_TOKEN, SMSGW, ServerProcess, private_webhook_env
from tests.helpers.webhook_receiver import Receiver

PASSPHRASE = "correct horse battery staple 2026"
OLD_PASSPHRASE = "the passphrase of 2025"
SECRET_TEXT = "Your one-time code is 904417; valid 5 minutes"
INBOUND_TEXT = "Reply from the patient: confirmed 10:30"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", env=private_webhook_env(), args=("-v",)) as proc:  # DEBUG logs
        yield proc


def _stored_texts(server: ServerProcess) -> list[str]:
    with sqlite3.connect(server.data_dir / "smsgw.db") as db:
        rows = db.execute("SELECT text FROM message UNION ALL SELECT text FROM inbound").fetchall()
        payloads = db.execute("SELECT payload FROM webhook_delivery").fetchall()
    return [r[0] for r in rows if r[0]] + [p[0] for p in payloads]


def test_only_ciphertext_reaches_the_server_and_the_modem_gets_plaintext(server: ServerProcess) -> None:
    with Receiver() as receiver, Client(server.grpc_target, server.token) as client:
        created = client.webhooks.create(receiver.url, ["sms:delivered", "sms:received"])
        receiver.secret = created.secret

        async def main() -> tuple[str, list[str], str]:
            async with trio.open_nursery() as nursery:
                [phone] = await start_phones(
                    nursery, server.grpc_target, server.token, server.device_url, 1,
                    private_token=PRIVATE_TOKEN, passphrases=(PASSPHRASE, OLD_PASSPHRASE),
                )
                sent = await trio.to_thread.run_sync(
                    lambda: client.send_message(["+15550001111"], SECRET_TEXT, passphrase=PASSPHRASE)
                )
                # A message a client sealed itself, with last year's passphrase: the key log opens it.
                old = await trio.to_thread.run_sync(
                    lambda: client.send_message(["+15550002222"], encrypt(OLD_PASSPHRASE, "old key"), is_encrypted=True)
                )
                phone.receive_sms("+15557654321", text=INBOUND_TEXT)
                with trio.fail_after(30):
                    await phone.wait_for(lambda p: p.statistics().delivered >= 2 and not p.unacked and not p.inbound_unacked)
                assert isinstance(phone.modem, GatedModem)
                handed = [d.text or "" for d in phone.modem.asked]
                nursery.cancel_scope.cancel()
            return sent.id, handed, old.id

        message_id, handed, old_id = trio.run(main)
        assert sorted(handed) == sorted([SECRET_TEXT, "old key"]), "the modem got the plaintext"
        # Two sms:delivered and one sms:received: the server has stored every receipt by then.
        got = receiver.wait_for(lambda got: len(got) >= 3)
        payloads = [r.body.decode() for r in got]

        stored = client.get_message(message_id)
        assert stored.is_encrypted and stored.state == common_pb2.DELIVERED
        assert stored.parts == 0  # the server cannot count ciphertext
        assert decrypt(PASSPHRASE, stored.text_message.text) == SECRET_TEXT
        assert client.get_message(old_id).state == common_pb2.DELIVERED

        [inbound] = client.list_inbound().messages
        assert inbound.is_encrypted and check_envelope(inbound.text_message.text) > 0
        assert decrypt(PASSPHRASE, inbound.text_message.text) == INBOUND_TEXT

        received = next(r.event for r in got if r.event["event"] == "sms:received")
        assert received["inbound"]["is_encrypted"] is True
        assert decrypt(PASSPHRASE, received["inbound"]["text_message"]["text"]) == INBOUND_TEXT

    server.stop()
    log = server.log_text()
    assert "session open" in log  # the log is there, at DEBUG
    for plaintext in (SECRET_TEXT, INBOUND_TEXT, "904417", "old key", PASSPHRASE, OLD_PASSPHRASE):
        assert plaintext not in log
        assert all(plaintext not in p for p in payloads)
        assert all(plaintext not in t for t in _stored_texts(server))


def test_a_phone_without_the_passphrase_reports_decrypt_failed(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:

        async def main() -> str:
            async with trio.open_nursery() as nursery:
                [phone] = await start_phones(
                    nursery, server.grpc_target, server.token, server.device_url, 1,
                    private_token=PRIVATE_TOKEN, passphrases=("a different passphrase",),
                )
                sent = await trio.to_thread.run_sync(
                    lambda: client.send_message(["+15550001111", "+15550002222"], "hidden", passphrase=PASSPHRASE)
                )
                with trio.fail_after(30):
                    await phone.wait_for(lambda p: p.statistics().failed >= 2 and not p.unacked)
                assert isinstance(phone.modem, GatedModem) and phone.modem.asked == []
                nursery.cancel_scope.cancel()
            return sent.id

        message = client.get_message(trio.run(main))
        assert message.state == common_pb2.FAILED
        assert all(r.error.startswith("decrypt_failed") for r in message.recipients)
        assert all(r.attempt == 1 for r in message.recipients), "decrypt_failed is final, never retried"


def test_smsgw_send_and_inbound_with_passphrase_env(server: ServerProcess) -> None:
    env = {**os.environ, "E2E_KEY": PASSPHRASE, "SMSGW_TOKEN": server.token, "SMSGW_SERVER": server.grpc_target}
    done = subprocess.run(
        [SMSGW, "send", "--to", "+15550003333", "--text", SECRET_TEXT, "--passphrase-env", "E2E_KEY", "--no-wait"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 0, done.stderr
    message_id = done.stdout.split()[0]
    with Client(server.grpc_target, server.token) as client:
        stored = client.get_message(message_id)
    assert stored.is_encrypted and decrypt(PASSPHRASE, stored.text_message.text) == SECRET_TEXT
    missing = subprocess.run(
        [SMSGW, "send", "--to", "+15550003333", "--text", "x", "--passphrase-env", "NO_SUCH_VAR", "--no-wait"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert missing.returncode == 2 and "NO_SUCH_VAR" in missing.stderr


def test_encrypted_data_messages_round_trip(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:

        async def main() -> tuple[bytes, str]:
            async with trio.open_nursery() as nursery:
                [phone] = await start_phones(
                    nursery, server.grpc_target, server.token, server.device_url, 1,
                    private_token=PRIVATE_TOKEN, passphrases=(PASSPHRASE,),
                )
                sent = await trio.to_thread.run_sync(
                    lambda: client.send_message(["+15550001111"], data=b"\x00\x01binary", port=2948, passphrase=PASSPHRASE)
                )
                phone.receive_sms("+15557654321", data=b"\xfe\xff", port=16001)
                with trio.fail_after(30):
                    await phone.wait_for(lambda p: p.statistics().delivered >= 1 and not p.unacked and not p.inbound_unacked)
                assert isinstance(phone.modem, GatedModem)
                [handed] = phone.modem.asked
                nursery.cancel_scope.cancel()
            assert handed.data is not None
            return handed.data, sent.id

        handed, message_id = trio.run(main)
        assert handed == b"\x00\x01binary"
        stored = client.get_message(message_id)
        assert stored.is_encrypted and decrypt_bytes(PASSPHRASE, stored.data_message.data) == b"\x00\x01binary"
        [inbound] = client.list_inbound().messages
        assert inbound.is_encrypted and decrypt_bytes(PASSPHRASE, inbound.data_message.data) == b"\xfe\xff"
