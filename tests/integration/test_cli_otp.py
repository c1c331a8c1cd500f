"""`smsgw otp` run as a process against `smsgw serve` and a simulated phone: the code the
phone's modem was given approves (exit 0), a wrong one exits 1 with the attempts left, show
and cancel print the verification, a limit's refusal exits 2 with its retry delay. No output
of the command ever carries the code (what the user typed included)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest
import trio
from smsgw.v1 import otp_pb2
from smsgw_client import Client

from tests.helpers.phones import GatedModem, start_phones
from tests.helpers.server import SMSGW, ServerProcess

TIMEOUT = 60
_CODE = re.compile(r"\b(\d{4,10})\b")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("cli-otp") / "data") as proc:
        yield proc


def _command(server: ServerProcess, args: tuple[str, ...]) -> list[str]:
    return [SMSGW, "otp", args[0], "--server", server.grpc_target, "--token-file", str(server.token_file()), *args[1:]]


def _otp(server: ServerProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(server, args), capture_output=True, text=True, timeout=TIMEOUT, input=stdin)


def _otp_together(server: ServerProcess, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once (each pays the interpreter's start-up: this keeps the module quick)."""
    procs = [subprocess.Popen(_command(server, c), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    done = []
    for command, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=TIMEOUT)
        done.append(subprocess.CompletedProcess(list(command), proc.returncode, out, err))
    return done


def _id(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout.split()[0]


def test_send_check_show(server: ServerProcess) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            [phone] = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1)
            assert isinstance(phone.modem, GatedModem)
            sent = await trio.to_thread.run_sync(lambda: _otp(server, "send", "--to", "+15550110001", "--length", "8"))
            assert sent.returncode == 0, sent.stderr
            verification = _id(sent)
            assert sent.stdout.split()[1] == "PENDING"
            assert "+15550110001" not in sent.stdout  # masked
            assert re.search(r"expires\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", sent.stdout)
            assert re.search(r"delivery\s+(QUEUED|SENDING|SENT|DELIVERED)", sent.stdout)
            with trio.fail_after(20):
                while not phone.modem.asked:
                    await trio.sleep(0.02)
            found = _CODE.search(phone.modem.asked[0].text or "")
            assert found is not None
            code = found.group(1)
            assert len(code) == 8
            wrong = "1" * 8 if code != "1" * 8 else "2" * 8

            denied = await trio.to_thread.run_sync(lambda: _otp(server, "check", verification, wrong))
            assert denied.returncode == 1, denied.stderr
            assert denied.stdout.strip() == f"{verification} DENIED: wrong code; 4 attempt(s) left"
            approved = await trio.to_thread.run_sync(lambda: _otp(server, "check", verification, "-", stdin=code + "\n"))
            assert approved.returncode == 0, approved.stderr
            assert approved.stdout.strip() == f"{verification} APPROVED"
            with Client(server.grpc_target, server.token) as client, trio.fail_after(20):
                while (await trio.to_thread.run_sync(lambda: client.otp.get(verification))).delivery_status \
                        != otp_pb2.DELIVERY_STATUS_DELIVERED:
                    await trio.sleep(0.05)
            again, shown = await trio.to_thread.run_sync(
                lambda: _otp_together(server, ("check", verification, code), ("show", verification)))
            assert again.returncode == 1 and " CANCELED: " in again.stdout  # a code works once
            assert shown.returncode == 0, shown.stderr
            assert shown.stdout.splitlines()[0] == f"{verification} APPROVED"
            assert re.search(r"delivery\s+DELIVERED  \(message \w+\)", shown.stdout)
            assert re.search(r"sends\s+1\n", shown.stdout) and re.search(r"attempts\s+2 used, 0 left", shown.stdout)
            for done in (sent, denied, approved, again, shown):
                assert code not in done.stdout + done.stderr and wrong not in done.stdout + done.stderr
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_cancel_refusals_and_usage(server: ServerProcess) -> None:
    """No phone needed: the SMS waits QUEUED."""
    sent, bad, unknown, neither = _otp_together(
        server,
        ("send", "--to", "+15550110002"),
        ("send", "--to", "+15550110003", "--template", "no placeholder"),
        ("show", "01NOSUCHVERIFICATION00000"),
        ("check", "123456"),
    )
    assert sent.returncode == 0, sent.stderr
    verification = _id(sent)
    assert re.search(r"delivery\s+QUEUED", sent.stdout)
    assert re.search(r"next resend\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC or later", sent.stdout)
    assert bad.returncode == 2 and not bad.stdout
    assert bad.stderr.strip() == "smsgw otp send: INVALID_ARGUMENT: --template: must contain {code} exactly once"
    assert unknown.returncode == 2 and unknown.stderr.startswith("smsgw otp show: NOT_FOUND: ")
    assert neither.returncode == 2 and "give ID CODE, or --to E164 CODE" in neither.stderr

    cooling, by_number = _otp_together(
        server,
        ("send", "--to", "+15550110002"),  # again at once: the 30 s resend cooldown refuses
        ("check", "--to", "+15550110002", "0000000"),  # 7 digits: never the 6-digit code
    )
    assert cooling.returncode == 2 and not cooling.stdout
    [line] = cooling.stderr.splitlines()
    delay = re.search(r"\(retry in (\d+) s\)$", line)
    assert line.startswith("smsgw otp send: RESOURCE_EXHAUSTED: ") and delay and 1 <= int(delay.group(1)) <= 30, line
    assert by_number.returncode == 1, by_number.stderr
    assert by_number.stdout.strip() == f"{verification} DENIED: wrong code; 4 attempt(s) left"

    canceled = _otp(server, "cancel", verification)
    assert canceled.returncode == 0 and canceled.stdout.split()[:2] == [verification, "CANCELED"]
    assert re.search(r"attempts\s+1 used, 0 left", canceled.stdout) and "next resend" not in canceled.stdout
