"""Messages sealed by the other gateways' own clients reach the reference phone and are opened
there, while storage holds only their ciphertext.

Two paths. Through the real bridge and real storage (tests/helpers/virtual_bridge.py: the
message stored as the API stores it, the real dispatcher, the PhoneAgent over memory), the
phone opens an SMSGate-sealed text and SMSGate-sealed numbers (the ciphertexts in
clients/vectors/smsgate.json, made by android-sms-gateway's Encryptor), and an httpSMS-sealed
text (clients/vectors/httpsms.json, made by the httpsms package's cipher) when told that
unmarked ciphertext is httpSMS's. And through the real gRPC API, which keeps both as opaque
ciphertext (gateway/api/validation.py checks their form only)."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from smsgw.v1 import common_pb2
from smsgw_client import Client

from device_bridge.protocol import SimInfo
from device_bridge.server import DEVICE_PATH
from gateway.messages.records import NewMessage
from gateway.types import State
from smsgw_agent import ModemOptions, PhoneAgent
from tests.helpers.memory_net import VirtualTime, run_virtual
from tests.helpers.phones import GatedModem, start_phones
from tests.helpers.server import PRIVATE_TOKEN, ServerProcess, private_webhook_env
from tests.helpers.virtual_bridge import World, connected

VECTORS = Path(__file__).resolve().parents[2] / "clients" / "vectors"
SMSGATE = {c["name"]: c for c in json.loads((VECTORS / "smsgate.json").read_text(encoding="utf-8"))["valid"]}
HTTPSMS = {c["name"]: c for c in json.loads((VECTORS / "httpsms.json").read_text(encoding="utf-8"))["valid"]}
TEXT = SMSGATE["ascii, the default 75000 iterations"]
NUMBERS = [SMSGATE["phone number"], SMSGATE["another phone number"]]
PASSPHRASE = TEXT["passphrase"]
assert all(n["passphrase"] == PASSPHRASE for n in NUMBERS)
HTTP = HTTPSMS["ascii"]


def _store(world: World, numbers: list[str], text: str, key: str) -> str:
    """Store an encrypted message as SendMessage stores one (parts 0: the server cannot count
    ciphertext) and wake the phone."""
    new = NewMessage(
        phone_numbers=tuple(numbers), text=text, data=None, port=0, device_id=world.device_id, sim_number=0,
        priority=0, valid_until=None, with_delivery_report=True, is_encrypted=True, idempotency_key=key,
        content_hash=key, parts=0, encoding="UCS-2", schedule_at=None,
    )
    record, created = world.messages.create(world.owner_id, new, world.now())
    assert created
    world.registry.wake([world.device_id])
    return record.id


def _phone(world: World, passphrases: tuple[str, ...], **options: Any) -> PhoneAgent:
    return PhoneAgent(
        f"ws://memory{DEVICE_PATH}", token=world.token, name="foreign",
        modem=GatedModem(ModemOptions(send_delay=0.2, delivery_delay=1.0)),
        sims=(SimInfo(1, "Sim Operator", "US"),), passphrases=passphrases, **options,
    )


def _run(world: World, agent: PhoneAgent, store: Callable[[], list[str]]) -> list[str]:
    """Store the messages (on the virtual clock), connect the phone, wait until each is settled."""
    ids: list[str] = []

    async def main(vt: VirtualTime) -> None:
        ids.extend(store())
        async with connected(world, agent):
            with trio.fail_after(600):  # virtual seconds
                while not all(world.messages.get(world.owner_id, i).state in {State.DELIVERED, State.FAILED} for i in ids):
                    await trio.sleep(1.0)
            await vt.settle()

    run_virtual(main)
    return ids


def _stored(world: World) -> list[str]:
    with sqlite3.connect(world.path / "smsgw.db") as db:
        rows = db.execute("SELECT text FROM message UNION ALL SELECT phone_number FROM recipient").fetchall()
    return [r[0] for r in rows if r[0]]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path, sims=1)
    try:
        yield made
    finally:
        made.close()


def test_smsgate_sealed_text_and_numbers_are_opened_on_the_phone_only(world: World) -> None:
    sealed_numbers = [n["ciphertext"] for n in NUMBERS]
    # The second message has a number no passphrase opens: that recipient fails, the other goes.
    stranger = SMSGATE["non-ASCII passphrase (UTF-8, as the app derives it)"]["ciphertext"]
    agent = _phone(world, ("a newer passphrase", PASSPHRASE))  # a key log: the older one opens it
    message_id, mixed_id = _run(world, agent, lambda: [
        _store(world, sealed_numbers, TEXT["ciphertext"], "smsgate"),
        _store(world, [stranger, sealed_numbers[0]], TEXT["ciphertext"], "mixed"),
    ])

    assert isinstance(agent.modem, GatedModem)
    # The bridge may send a message's recipients in one Deliver or several: compare per number.
    handed = {(d.message_id, d.text, n) for d in agent.modem.asked for n in d.phone_numbers}
    plain_numbers = [n["plaintext"] for n in NUMBERS]
    assert handed == {
        (message_id, TEXT["plaintext"], plain_numbers[0]),
        (message_id, TEXT["plaintext"], plain_numbers[1]),
        (mixed_id, TEXT["plaintext"], plain_numbers[0]),
    }, "the modem got the text and the numbers opened, and never the number no passphrase opens"

    message = world.messages.get(world.owner_id, message_id)
    assert message.state == State.DELIVERED and message.is_encrypted
    mixed = world.messages.get(world.owner_id, mixed_id)
    states = {r.index: (r.state, r.error) for r in mixed.recipients}
    assert states[0][0] == State.FAILED and states[0][1].startswith("decrypt_failed")
    assert states[1][0] == State.DELIVERED

    stored = _stored(world)
    assert TEXT["ciphertext"] in stored and set(sealed_numbers) <= set(stored)
    for plaintext in (TEXT["plaintext"], "424242", *plain_numbers, PASSPHRASE):
        assert all(plaintext not in row for row in stored), "storage holds only ciphertext"


def test_httpsms_sealed_text_is_opened_when_the_phone_is_told_unmarked_is_httpsms(world: World) -> None:
    agent = _phone(world, (HTTP["passphrase"],), unmarked_format="httpsms")
    [told] = _run(world, agent, lambda: [_store(world, ["+15550001111"], HTTP["ciphertext"], "httpsms")])
    assert isinstance(agent.modem, GatedModem)
    assert [(d.text, d.phone_numbers) for d in agent.modem.asked] == [(HTTP["plaintext"], ("+15550001111",))]
    assert world.messages.get(world.owner_id, told).state == State.DELIVERED
    assert HTTP["plaintext"] not in "".join(_stored(world))


def test_unmarked_ciphertext_fails_without_the_option(world: World) -> None:
    agent = _phone(world, (HTTP["passphrase"],))
    [untold] = _run(world, agent, lambda: [_store(world, ["+15550001111"], HTTP["ciphertext"], "untold")])
    assert isinstance(agent.modem, GatedModem) and agent.modem.asked == []
    [recipient] = world.messages.get(world.owner_id, untold).recipients
    assert recipient.state == State.FAILED and recipient.error.startswith("decrypt_failed")


def test_the_agent_refuses_an_unknown_unmarked_format() -> None:
    with pytest.raises(ValueError):
        PhoneAgent("ws://x/", token="t", modem=GatedModem(ModemOptions()), unmarked_format="smsgate")  # type: ignore[arg-type]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", env=private_webhook_env()) as proc:
        yield proc


def test_through_the_grpc_api_foreign_ciphertext_reaches_the_phone(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:
        sends = [([n["ciphertext"] for n in NUMBERS], TEXT["ciphertext"]), (["+15550001111"], HTTP["ciphertext"])]
        ids: list[str] = []

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                [phone] = await start_phones(
                    nursery, server.grpc_target, server.token, server.device_url, 1,
                    private_token=PRIVATE_TOKEN, passphrases=(PASSPHRASE, HTTP["passphrase"]), unmarked_format="httpsms",
                )
                for numbers, text in sends:
                    sent = await trio.to_thread.run_sync(lambda: client.send_message(numbers, text, is_encrypted=True))
                    ids.append(sent.id)
                with trio.fail_after(30):
                    await phone.wait_for(lambda p: p.statistics().delivered >= 3 and not p.unacked)
                assert isinstance(phone.modem, GatedModem)
                handed = {(d.text, n) for d in phone.modem.asked for n in d.phone_numbers}
                assert handed == {(TEXT["plaintext"], n["plaintext"]) for n in NUMBERS} | {(HTTP["plaintext"], "+15550001111")}
                nursery.cancel_scope.cancel()

        trio.run(main)
        for message_id in ids:
            stored = client.get_message(message_id)
            assert stored.is_encrypted and stored.state == common_pb2.DELIVERED
            assert stored.text_message.text in (TEXT["ciphertext"], HTTP["ciphertext"])


def test_the_official_smsgate_client_seals_and_the_phone_opens(tmp_path: Path) -> None:
    """SMSGate's Python client with its own Encryptor sends through smsgw's SMSGate API (text,
    and a data message whose base64 it seals): storage keeps the ciphertext, the reference
    phone opens text and numbers with the passphrase."""
    pytest.importorskip("Crypto", reason="android-sms-gateway[encryption] (pycryptodome) is a dev dependency")
    from android_sms_gateway import APIClient, DataMessage, Encryptor, Message, TextMessage

    env = {**private_webhook_env(), "SMSGW_COMPAT__SMSGATE__LISTEN": "127.0.0.1:0"}
    with ServerProcess(tmp_path / "data", env=env) as server:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                [phone] = await start_phones(
                    nursery, server.grpc_target, server.token, server.device_url, 1,
                    private_token=PRIVATE_TOKEN, passphrases=("client secret",),
                )

                def send() -> str:
                    with APIClient("admin", server.admin_password, base_url=server.endpoints["smsgate"],
                                   encryptor=Encryptor("client secret")) as api:
                        sent = api.send(Message(phone_numbers=["+15550001234"], text_message=TextMessage("opened on the phone")))
                        api.send(Message(phone_numbers=["+15550001235"], with_delivery_report=False,
                                         data_message=DataMessage(base64.b64encode(b"\x01\x02binary").decode(), 2948)))
                    return str(sent.id)

                message_id = await trio.to_thread.run_sync(send)
                with trio.fail_after(30):
                    await phone.wait_for(lambda p: len(p.modem.asked) >= 2 and not p.unacked)  # type: ignore[attr-defined]
                assert isinstance(phone.modem, GatedModem)
                handed = {tuple(d.phone_numbers): (d.text, d.data) for d in phone.modem.asked}
                assert handed == {("+15550001234",): ("opened on the phone", None), ("+15550001235",): (None, b"\x01\x02binary")}
                with Client(server.grpc_target, server.token) as client:
                    stored = client.get_message(message_id)
                assert stored.is_encrypted and stored.text_message.text.startswith("$aes-256-cbc/pbkdf2-sha1$")
                assert stored.recipients[0].phone_number.startswith("$aes-256-cbc/pbkdf2-sha1$")
                nursery.cancel_scope.cancel()

        trio.run(main)
