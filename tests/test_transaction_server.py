"""Server transactions: INVITE (RFC 3261 §17.2.1 with RFC 6026) and non-INVITE (§17.2.2)."""

from __future__ import annotations

import pytest

from pbxd.sip.message import Request, Response
from pbxd.sip.transaction import ServerTransaction, TransactionState
from transaction_support import (
    TCP_PEER,
    UDP_PEER,
    Env,
    ack_for,
    answer,
    request,
    response,
    status_of,
)

# The env and make_env fixtures.


def receive(env: Env, req: Request, source=UDP_PEER) -> ServerTransaction:  # type: ignore[no-untyped-def]
    env.layer.receive(req, source)
    return env.tu.requests[-1][0]


def sent_statuses(env: Env) -> list[int | None]:
    return [status_of(m) for m in env.transport.messages()]


# -- INVITE: 100 Trying -------------------------------------------------------------


def test_100_trying_is_sent_after_200_ms_when_the_tu_is_silent(env: Env) -> None:
    invite = request()
    txn = receive(env, invite)
    assert txn.state is TransactionState.PROCEEDING and txn.is_invite
    assert env.tu.requests == [(txn, invite)]
    env.pump_to(0.15)
    assert env.transport.sent == []
    env.pump_to(0.2)
    [trying] = env.transport.sent
    assert trying.at == pytest.approx(0.2)
    assert trying.kind == "send_response" and trying.target == UDP_PEER
    message = trying.message
    assert isinstance(message, Response) and message.status == 100
    assert message.get_all("via") == invite.get_all("via")
    assert message.get("timestamp") == "54"  # §8.2.6.1
    assert message.to_addr.tag is None
    assert (message.call_id, str(message.cseq)) == (invite.call_id, "1 INVITE")
    answer(txn, 486)
    env.layer.receive(ack_for(invite, txn.last_response), UDP_PEER)
    env.pump(10)


def test_no_100_trying_when_the_tu_answers_in_time(env: Env) -> None:
    txn = receive(env, request())
    env.pump_to(0.1)
    answer(txn, 180)
    env.pump_to(1)
    assert sent_statuses(env) == [180]
    answer(txn, 200)
    env.pump(40)
    assert sent_statuses(env) == [180, 200]


def test_trying_delay_is_configurable(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(trying_delay=0.05)
    txn = receive(env, request())
    env.pump_to(0.05, step=0.01)
    assert env.transport.times() == [pytest.approx(0.05)]
    answer(txn, 200)
    env.pump(40)


def test_retransmitted_invite_gets_the_last_provisional(env: Env) -> None:
    invite = request()
    txn = receive(env, invite)
    env.pump_to(0.5)
    env.layer.receive(invite, UDP_PEER)
    assert sent_statuses(env) == [100, 100]
    answer(txn, 180)
    answer(txn, 183)
    env.pump_to(1.5)
    env.layer.receive(invite, UDP_PEER)
    assert sent_statuses(env) == [100, 100, 180, 183, 183]
    assert len(env.tu.requests) == 1  # retransmissions never reach the TU
    answer(txn, 603)
    env.layer.receive(ack_for(invite, txn.last_response), UDP_PEER)
    env.pump(10)


def test_invite_retransmitted_before_the_trying_timer_is_answered_with_100(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(trying_delay=1.0)
    invite = request()
    txn = receive(env, invite)
    env.pump_to(0.5)
    env.layer.receive(invite, UDP_PEER)
    env.pump_to(2)
    assert env.transport.times() == [0.5]  # the trying timer did not send a second 100
    assert sent_statuses(env) == [100]
    answer(txn, 200)
    env.pump(40)


# -- INVITE: non-2xx final, Timers G, H, I -------------------------------------------


def test_non_2xx_final_over_udp_is_retransmitted_on_timer_g_until_timer_h(env: Env) -> None:
    invite = request()
    txn = receive(env, invite)
    env.pump_to(1)
    answer(txn, 486)
    assert txn.state is TransactionState.COMPLETED and txn.has_final_response
    env.pump_to(40)
    finals = [s.at for s in env.transport.sent if status_of(s.message) == 486]
    # §17.2.1: T1 doubling capped at T2, from the first send of the final response.
    assert finals == [1, 1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    # Timer H: 64*T1 without an ACK, and the TU hears of it.
    assert [(at, reason) for at, _, reason in env.tu.terminations] == [(33, "timeout")]
    assert txn.state is TransactionState.TERMINATED


def test_timer_g_and_h_follow_t1_and_t2(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(t1=0.25, t2=1.0)
    txn = receive(env, request("INVITE"))
    answer(txn, 500)
    env.pump_to(20, step=0.01)
    finals = [s.at for s in env.transport.sent if status_of(s.message) == 500]
    assert finals == pytest.approx([0, 0.25, 0.75, 1.75] + [2.75 + i for i in range(14)])
    assert [(at, reason) for at, _, reason in env.tu.terminations] == [(16, "timeout")]


def test_ack_confirms_and_timer_i_absorbs_retransmissions(env: Env) -> None:
    invite = request()
    txn = receive(env, invite)
    busy = answer(txn, 486)
    env.pump_to(0.6)
    ack = ack_for(invite, busy)
    env.layer.receive(ack, UDP_PEER)
    assert txn.state is TransactionState.CONFIRMED
    env.pump_to(5.5)
    env.layer.receive(ack, UDP_PEER)
    env.layer.receive(invite, UDP_PEER)
    assert env.transport.times() == [0, 0.5]  # Timer G stopped; nothing answered in Confirmed
    assert env.tu.acks == []  # an ACK for a non-2xx stays in the transaction
    assert len(env.tu.requests) == 1
    env.pump_to(5.55)
    assert txn.state is TransactionState.CONFIRMED
    env.pump_to(5.6)  # Timer I = T4 after the ACK
    assert txn.state is TransactionState.TERMINATED
    assert [(at, reason) for at, _, reason in env.tu.terminations] == [(pytest.approx(5.6), "normal")]


def test_retransmitted_invite_in_completed_gets_the_final_again(env: Env) -> None:
    invite = request()
    txn = receive(env, invite)
    busy = answer(txn, 486)
    env.pump_to(0.2)
    env.layer.receive(invite, UDP_PEER)
    assert sent_statuses(env) == [486, 486]
    assert env.transport.sent[-1].message is busy
    env.layer.receive(ack_for(invite, busy), UDP_PEER)
    env.pump(10)


def test_non_2xx_final_over_tcp_has_no_timer_g_and_ends_on_ack(env: Env) -> None:
    invite = request(transport="TCP")
    txn = receive(env, invite, TCP_PEER)
    busy = answer(txn, 486)
    env.pump_to(10)
    assert env.transport.times() == [0]
    env.layer.receive(ack_for(invite, busy), TCP_PEER)
    assert txn.state is TransactionState.TERMINATED  # Timer I = 0
    assert [reason for _, _, reason in env.tu.terminations] == ["normal"]


def test_non_2xx_final_over_tcp_still_times_out_on_timer_h(env: Env) -> None:
    txn = receive(env, request(transport="TCP"), TCP_PEER)
    answer(txn, 404)
    env.pump_to(40)
    assert env.transport.times() == [0]
    assert [(at, reason) for at, _, reason in env.tu.terminations] == [(32, "timeout")]
    assert txn.state is TransactionState.TERMINATED


def test_ack_before_any_final_response_is_dropped(env: Env) -> None:
    invite = request()
    txn = receive(env, invite)
    env.layer.receive(ack_for(invite, response(invite, 486)), UDP_PEER)
    assert txn.state is TransactionState.PROCEEDING
    assert env.tu.acks == []
    answer(txn, 200)
    env.pump(40)


# -- INVITE: 2xx and the RFC 6026 Accepted state (Timer L) ---------------------------------


def test_2xx_enters_accepted_where_invites_are_absorbed_and_acks_go_to_the_tu(env: Env) -> None:
    invite = request()
    txn = receive(env, invite)
    ok = answer(txn, 200)
    assert txn.state is TransactionState.ACCEPTED
    env.pump_to(0.5)
    for _ in range(50):  # an INVITE retransmission storm
        env.layer.receive(invite, UDP_PEER)
    assert sent_statuses(env) == [200]  # absorbed: the TU retransmits 2xx, not the transaction
    assert len(env.tu.requests) == 1
    # The TU's own 2xx retransmissions go out through the transaction.
    env.pump_to(1)
    txn.respond(ok)
    assert env.transport.times() == [0, 1]
    # An ACK for the 2xx (a new branch, §17.1.1.3) reaches the TU...
    ack = ack_for(invite, ok, branch="z9hG4bKack2xx", uri="sip:bob@192.0.2.20")
    env.layer.receive(ack, UDP_PEER)
    # ...and so does one reusing the INVITE's branch (RFC 6026 §7.1).
    same_branch_ack = ack_for(invite, ok)
    env.layer.receive(same_branch_ack, UDP_PEER)
    assert env.tu.acks == [(ack, UDP_PEER), (same_branch_ack, UDP_PEER)]
    assert txn.state is TransactionState.ACCEPTED
    # Other responses are discarded now.
    answer(txn, 486)
    answer(txn, 180)
    assert sent_statuses(env) == [200, 200]
    env.pump_to(31.9)
    assert txn.state is TransactionState.ACCEPTED
    env.pump_to(32)  # Timer L = 64*T1 after the 2xx
    assert txn.state is TransactionState.TERMINATED
    assert [(at, reason) for at, _, reason in env.tu.terminations] == [(32, "normal")]


def test_2xx_over_tcp_still_waits_in_accepted(env: Env) -> None:
    txn = receive(env, request(transport="TCP"), TCP_PEER)
    answer(txn, 200)
    env.pump_to(31.9)
    assert txn.state is TransactionState.ACCEPTED
    env.pump_to(32)
    assert txn.state is TransactionState.TERMINATED


def test_provisional_then_2xx(env: Env) -> None:
    txn = receive(env, request())
    answer(txn, 100)
    answer(txn, 180)
    answer(txn, 200)
    env.pump(40)
    assert sent_statuses(env) == [100, 180, 200]


# -- non-INVITE ---------------------------------------------------------------------------


def test_non_invite_trying_absorbs_retransmissions_until_the_tu_answers(env: Env) -> None:
    register = request("REGISTER")
    txn = receive(env, register)
    assert txn.state is TransactionState.TRYING and not txn.is_invite
    env.pump_to(1)
    env.layer.receive(register, UDP_PEER)
    assert env.transport.sent == []  # no 100 Trying for non-INVITE; nothing to repeat yet
    assert len(env.tu.requests) == 1
    answer(txn, 100)
    assert txn.state is TransactionState.PROCEEDING
    env.layer.receive(register, UDP_PEER)
    assert sent_statuses(env) == [100, 100]
    ok = answer(txn, 200)
    assert txn.state is TransactionState.COMPLETED
    env.pump_to(20)
    env.layer.receive(register, UDP_PEER)
    assert sent_statuses(env) == [100, 100, 200, 200]
    assert env.transport.sent[-1].message is ok
    # §17.2.2: other finals from the TU are discarded in Completed.
    answer(txn, 500)
    assert sent_statuses(env) == [100, 100, 200, 200]
    env.pump_to(32.9)
    assert txn.state is TransactionState.COMPLETED
    env.pump_to(33)  # Timer J = 64*T1 after the final response
    assert txn.state is TransactionState.TERMINATED
    assert [(at, reason) for at, _, reason in env.tu.terminations] == [(33, "normal")]
    # No response is ever retransmitted on a timer by a non-INVITE server.
    assert env.transport.times() == [1, 1, 1, 20]


def test_non_invite_final_over_tcp_terminates_at_once(env: Env) -> None:
    txn = receive(env, request("OPTIONS", transport="TCP"), TCP_PEER)
    answer(txn, 200)
    assert txn.state is TransactionState.TERMINATED  # Timer J = 0
    assert env.tu.terminations == [(0, txn, "normal")]


def test_tu_answering_inside_request_received(env: Env) -> None:
    env.tu.answer = lambda txn, req: answer(txn, 200)
    txn = receive(env, request("OPTIONS"))
    assert txn.state is TransactionState.COMPLETED
    env.pump(40)


def test_respond_refuses_what_is_not_a_response(env: Env) -> None:
    txn = receive(env, request("OPTIONS"))
    with pytest.raises(ValueError):
        txn.respond(request("OPTIONS"))  # type: ignore[arg-type]
    answer(txn, 200)
    env.pump(40)


def test_respond_after_termination_is_discarded(env: Env) -> None:
    txn = receive(env, request("OPTIONS", transport="TCP"), TCP_PEER)
    answer(txn, 200)
    answer(txn, 200)
    assert sent_statuses(env) == [200]


# -- transport errors (§17.2.4) ----------------------------------------------------------


@pytest.mark.parametrize("status", [180, 200, 486])
def test_transport_error_terminates_an_invite_server_transaction(env: Env, status: int) -> None:
    txn = receive(env, request())
    answer(txn, status)
    env.pump_to(0.2)
    env.layer.transport_error(UDP_PEER, "ICMP port unreachable")
    assert txn.state is TransactionState.TERMINATED
    assert [(at, reason) for at, _, reason in env.tu.terminations] == [(pytest.approx(0.2), "transport")]
    env.pump(40)
    answer(txn, 500)  # late TU answers are discarded
    assert len(env.transport.sent) == 1


def test_transport_error_while_sending_the_response(env: Env) -> None:
    txn = receive(env, request("OPTIONS", transport="TCP"), TCP_PEER)
    env.transport.fail_next = "connection reset"
    answer(txn, 200)
    assert txn.state is TransactionState.TERMINATED
    # Timer J (0 over TCP) would end it too; the TU hears once, of the error.
    assert [reason for _, _, reason in env.tu.terminations] == ["transport"]


def test_transport_error_while_sending_a_non_2xx_over_udp(env: Env) -> None:
    txn = receive(env, request())
    env.transport.fail_next = "ICMP host unreachable"
    answer(txn, 486)
    assert [reason for _, _, reason in env.tu.terminations] == ["transport"]
    assert txn.state is TransactionState.TERMINATED


def test_transport_error_for_another_source_leaves_the_transaction_alone(env: Env) -> None:
    txn = receive(env, request("OPTIONS"))
    env.layer.transport_error(TCP_PEER, "connection reset")
    assert txn.state is TransactionState.TRYING
    answer(txn, 200)
    env.pump(40)
