"""Receipts storage can never apply are named (MessageRepository.apply_receipts_checked), so the
bridge refuses them (Reject) instead of acknowledging them; the others in the batch still apply."""

from __future__ import annotations

from gateway.messages.records import ReceiptRefusal, ReceiptUpdate
from gateway.types import State
from tests.unit.gateway.test_gw_repository import T0, World, new_message, world  # noqa: F401 (the fixture)

A, S, DL = State.ACCEPTED, State.SENT, State.DELIVERED


def test_unknown_messages_and_recipients_are_refused_and_the_rest_applies(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev, other = world.device_ids
    m, _ = repo.create(owner, new_message(2, device_id=dev), T0)
    world.online(dev, "s1")
    repo.dispatch(dev, "s1", 10, T0)
    receipts = [
        ReceiptUpdate("no-such-id", S, 0),
        ReceiptUpdate(m.id, A, 0, recipient_indices=(0, 2)),  # the message has recipients 0 and 1
        ReceiptUpdate(m.id, S, 2),
        ReceiptUpdate(m.id, DL, 1),
    ]
    for round_ in range(2):  # a re-sent batch is refused the same way (and changes nothing more)
        changed, refused = repo.apply_receipts_checked(dev, receipts, T0)
        assert (changed > 0) == (round_ == 0)
        assert refused == {
            0: ReceiptRefusal.UNKNOWN_MESSAGE,
            1: ReceiptRefusal.UNKNOWN_RECIPIENT,
            2: ReceiptRefusal.UNKNOWN_RECIPIENT,
        }
    assert [r.state for r in repo.get(owner, m.id).recipients] == [State.DISPATCHED, DL]
    # A message routed to another device is unknown there.
    assert repo.apply_receipts_checked(other, [ReceiptUpdate(m.id, DL, 0)], T0) == (0, {0: ReceiptRefusal.UNKNOWN_MESSAGE})
