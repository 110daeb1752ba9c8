"""Client transactions: INVITE (RFC 3261 §17.1.1 with RFC 6026) and non-INVITE (§17.1.2)."""

from __future__ import annotations

import pytest

from pbxd.sip.message import Request, Response
from pbxd.sip.transaction import TransactionState
from transaction_support import (
    TCP_PEER,
    TLS_PEER,
    UDP_PEER,
    Env,
    request,
    response,
)

# The env and make_env fixtures.

OURS = "198.51.100.1:5060"


def outgoing(method: str = "INVITE", **kwargs) -> Request:  # type: ignore[no-untyped-def]
    return request(method, sent_by=OURS, **kwargs)


def is_method(method: str):  # type: ignore[no-untyped-def]
    return lambda m: isinstance(m, Request) and m.method == method


# -- INVITE: Timers A and B ---------------------------------------------------


def test_invite_over_udp_retransmits_on_timer_a_until_timer_b(env: Env) -> None:
    invite = outgoing()
    client = env.send(invite)
    assert client.txn.state is TransactionState.CALLING
    env.pump_to(40)
    # §17.1.1.2: T1, 2*T1, 4*T1 ... (no cap for INVITE) until 64*T1.
    assert env.transport.times() == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(s.message is invite and s.target == UDP_PEER and s.kind == "send" for s in env.transport.sent)
    assert client.failures == [(32.0, "timeout")]
    assert client.responses == []
    assert client.txn.state is TransactionState.TERMINATED


def test_timer_a_and_b_follow_a_configured_t1(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(t1=0.1)
    client = env.send(outgoing())
    env.pump_to(10, step=0.01)
    assert env.transport.times() == pytest.approx([0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert client.failures == [(pytest.approx(6.4), "timeout")]


@pytest.mark.parametrize("peer", [TCP_PEER, TLS_PEER])
def test_invite_over_a_reliable_transport_is_sent_once(env: Env, peer) -> None:  # type: ignore[no-untyped-def]
    client = env.send(outgoing(transport=peer.via_transport), peer)
    env.pump_to(40)
    assert env.transport.times() == [0]
    assert client.failures == [(32.0, "timeout")]


def test_provisional_stops_timers_a_and_b(env: Env) -> None:
    invite = outgoing()
    client = env.send(invite)
    env.pump_to(1.0)
    env.layer.receive(response(invite, 180), UDP_PEER)
    assert client.txn.state is TransactionState.PROCEEDING
    env.pump_to(200)
    assert env.transport.times() == [0, 0.5]  # no retransmission after the 180
    assert client.failures == []  # Timer B no longer runs in Proceeding
    assert client.statuses == [180]
    env.layer.receive(response(invite, 486), UDP_PEER)
    env.pump(40)
    assert client.statuses == [180, 486]


def test_several_provisionals_all_reach_the_tu(env: Env) -> None:
    invite = outgoing()
    client = env.send(invite)
    for status in (100, 180, 183, 180):
        env.layer.receive(response(invite, status), UDP_PEER)
    assert client.statuses == [100, 180, 183, 180]
    env.layer.receive(response(invite, 603), UDP_PEER)
    env.pump(40)


# -- INVITE: non-2xx final, ACK and Timer D --------------------------------------


def test_non_2xx_final_is_acked_and_timer_d_runs_32_seconds(env: Env) -> None:
    invite = outgoing()
    client = env.send(invite)
    env.pump_to(0.7)
    busy = response(invite, 486)
    env.layer.receive(busy, UDP_PEER)
    assert client.txn.state is TransactionState.COMPLETED
    assert client.responses == [(0.7, busy)]
    acks = [s for s in env.transport.sent if isinstance(s.message, Request) and s.message.method == "ACK"]
    assert len(acks) == 1 and acks[0].at == 0.7 and acks[0].target == UDP_PEER
    ack = acks[0].message
    # §17.1.1.3: the ACK for a non-2xx belongs to the INVITE transaction.
    assert ack.uri == invite.uri
    assert ack.get_all("via") == [invite.get_all("via")[0]]
    assert ack.via.branch == invite.via.branch
    assert ack.to_addr.tag == "b1"
    assert ack.get("from") == invite.get("from")
    assert ack.call_id == invite.call_id
    assert (ack.cseq.seq, ack.cseq.method) == (1, "ACK")
    assert ack.get_all("route") == invite.get_all("route")
    assert ack.max_forwards == 70
    assert ack.body == b""
    env.pump_to(31)
    # Retransmitted finals are ACKed again and not passed up.
    env.layer.receive(response(invite, 486), UDP_PEER)
    env.layer.receive(response(invite, 486), UDP_PEER)
    assert len(env.transport.times(is_method("ACK"))) == 3
    assert client.statuses == [486]
    env.pump_to(32.6)
    assert client.txn.state is TransactionState.COMPLETED
    env.pump_to(32.7)  # Timer D: 32 s after the final response
    assert client.txn.state is TransactionState.TERMINATED
    assert client.failures == []
    # After Timer D a retransmission matches nothing.
    env.layer.receive(response(invite, 486), UDP_PEER)
    assert [r.status for r, _ in env.tu.strays] == [486]


def test_timer_d_is_configurable(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(timer_d=40.0)
    invite = outgoing()
    client = env.send(invite)
    env.layer.receive(response(invite, 404), UDP_PEER)
    env.pump_to(39.9)
    assert client.txn.state is TransactionState.COMPLETED
    env.pump_to(40)
    assert client.txn.state is TransactionState.TERMINATED


def test_non_2xx_final_over_tcp_terminates_at_once(env: Env) -> None:
    invite = outgoing(transport="TCP")
    client = env.send(invite, TCP_PEER)
    env.layer.receive(response(invite, 480), TCP_PEER)
    assert client.txn.state is TransactionState.TERMINATED  # Timer D = 0
    assert [m.method for m in env.transport.messages()] == ["INVITE", "ACK"]
    assert client.statuses == [480]


def test_responses_after_a_non_2xx_final_are_not_passed_up(env: Env) -> None:
    invite = outgoing()
    client = env.send(invite)
    env.layer.receive(response(invite, 500), UDP_PEER)
    env.layer.receive(response(invite, 180), UDP_PEER)  # 1xx after final
    env.layer.receive(response(invite, 200, to_tag="late"), UDP_PEER)
    assert client.statuses == [500]
    assert len(env.transport.times(is_method("ACK"))) == 1  # only finals >= 300 are re-ACKed
    env.pump(40)


# -- INVITE: 2xx and the RFC 6026 Accepted state (Timer M) -------------------------


def test_2xx_enters_accepted_and_every_2xx_reaches_the_tu_until_timer_m(env: Env) -> None:
    invite = outgoing()
    client = env.send(invite)
    env.pump_to(0.3)
    env.layer.receive(response(invite, 200), UDP_PEER)
    assert client.txn.state is TransactionState.ACCEPTED
    assert [m.method for m in env.transport.messages()] == ["INVITE"]  # the TU ACKs a 2xx, not us
    env.pump_to(5)
    assert env.transport.times() == [0]  # Timer A stopped
    env.layer.receive(response(invite, 200), UDP_PEER)  # retransmission
    env.layer.receive(response(invite, 200, to_tag="fork2"), UDP_PEER)  # another fork
    env.layer.receive(response(invite, 180), UDP_PEER)  # discarded in Accepted
    env.layer.receive(response(invite, 486), UDP_PEER)  # discarded in Accepted
    assert client.statuses == [200, 200, 200]
    assert [r.to_addr.tag for _, r in client.responses] == ["b1", "b1", "fork2"]
    env.pump_to(32.2)
    assert client.txn.state is TransactionState.ACCEPTED
    env.pump_to(32.3)  # Timer M = 64*T1 after the first 2xx
    assert client.txn.state is TransactionState.TERMINATED
    assert client.failures == []


def test_2xx_over_tcp_still_waits_in_accepted(env: Env) -> None:
    invite = outgoing(transport="TCP")
    client = env.send(invite, TCP_PEER)
    env.layer.receive(response(invite, 200), TCP_PEER)
    assert client.txn.state is TransactionState.ACCEPTED
    env.pump_to(31.9)
    env.layer.receive(response(invite, 200, to_tag="fork2"), TCP_PEER)
    assert client.statuses == [200, 200]
    env.pump_to(32)
    assert client.txn.state is TransactionState.TERMINATED


def test_2xx_storm_after_timer_m_goes_to_the_tu_as_strays(env: Env) -> None:
    invite = outgoing()
    client = env.send(invite)
    env.layer.receive(response(invite, 200), UDP_PEER)
    storm = response(invite, 200)
    for _ in range(200):
        env.layer.receive(storm, UDP_PEER)
    assert len(client.responses) == 201
    env.pump(33)
    for _ in range(200):
        env.layer.receive(storm, UDP_PEER)
    assert len(client.responses) == 201
    assert len(env.tu.strays) == 200
    assert len(env.transport.sent) == 1


# -- INVITE: Timer C and CANCEL ------------------------------------------------------


def test_cancel_request_copies_the_invite_per_section_9_1(env: Env) -> None:
    invite = outgoing(extra="Require: 100rel\r\nContent-Type: application/sdp\r\n")
    client = env.send(invite)
    cancel = client.txn.cancel_request()
    assert cancel.method == "CANCEL"
    assert cancel.uri == invite.uri
    assert cancel.get_all("via") == [invite.get_all("via")[0]]
    assert cancel.via.branch == invite.via.branch
    assert cancel.get("to") == invite.get("to")
    assert cancel.get("from") == invite.get("from")
    assert cancel.call_id == invite.call_id
    assert (cancel.cseq.seq, cancel.cseq.method) == (invite.cseq.seq, "CANCEL")
    assert cancel.get_all("route") == invite.get_all("route")
    assert "require" not in cancel  # §9.1: no Require or Proxy-Require
    env.pump(40)


def test_cancel_request_of_a_non_invite_is_refused(env: Env) -> None:
    client = env.send(outgoing("OPTIONS"))
    with pytest.raises(ValueError):
        client.txn.cancel_request()
    env.pump(40)


def test_cancel_is_its_own_transaction_and_the_487_reaches_the_invite(env: Env) -> None:
    invite = outgoing()
    inviting = env.send(invite)
    env.layer.receive(response(invite, 180), UDP_PEER)
    cancel = inviting.txn.cancel_request()
    cancelling = env.send(cancel)
    assert inviting.txn.state is TransactionState.PROCEEDING
    assert cancelling.txn.state is TransactionState.TRYING
    env.layer.receive(response(cancel, 200), UDP_PEER)
    env.layer.receive(response(invite, 487), UDP_PEER)
    assert cancelling.statuses == [200]
    assert inviting.statuses == [180, 487]
    assert env.transport.messages()[-1].method == "ACK"
    env.pump(40)
    assert inviting.failures == cancelling.failures == []


def test_invite_is_given_up_64_t1_after_a_cancel_without_a_final_response(env: Env) -> None:
    invite = outgoing()
    inviting = env.send(invite)
    env.pump_to(2)
    env.layer.receive(response(invite, 180), UDP_PEER)
    env.pump_to(10)
    cancel = inviting.txn.cancel_request()
    cancelling = env.send(cancel)
    env.layer.receive(response(cancel, 200), UDP_PEER)
    env.pump_to(41.9)
    assert inviting.failures == []
    env.pump_to(42)  # §9.1: 64*T1 after the CANCEL
    assert inviting.failures == [(42.0, "timeout")]
    assert cancelling.statuses == [200]


def test_timer_c_cancels_the_invite_and_restarts_with_each_provisional(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(timer_c=181.0)
    invite = outgoing()
    client = env.send(invite)
    env.pump_to(1)
    env.layer.receive(response(invite, 180), UDP_PEER)
    env.pump_to(100)
    env.layer.receive(response(invite, 183), UDP_PEER)
    env.pump_to(280.9)
    assert env.transport.times(is_method("CANCEL")) == []
    env.pump_to(281)  # 181 s after the last provisional
    cancels = [s for s in env.transport.sent if isinstance(s.message, Request) and s.message.method == "CANCEL"]
    assert [s.at for s in cancels] == [281]
    cancel = cancels[0].message
    assert cancel.via.branch == invite.via.branch
    # The CANCEL over UDP is retransmitted by its own transaction.
    env.pump_to(281.5)
    assert env.transport.times(is_method("CANCEL")) == [281, 281.5]
    env.layer.receive(response(cancel, 200), UDP_PEER)
    env.layer.receive(response(invite, 487), UDP_PEER)
    assert client.statuses == [180, 183, 487]
    assert client.failures == []
    env.pump(40)


def test_timer_c_does_not_fire_once_the_tu_cancelled(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(timer_c=181.0)
    invite = outgoing()
    client = env.send(invite)
    env.layer.receive(response(invite, 180), UDP_PEER)
    cancel = client.txn.cancel_request()
    env.send(cancel)
    env.layer.receive(response(cancel, 200), UDP_PEER)
    env.pump_to(300)
    assert len(env.transport.times(is_method("CANCEL"))) == 1
    assert client.failures == [(32.0, "timeout")]  # the §9.1 guard ended it


def test_timer_c_stays_off_after_a_cancel_even_when_the_guard_outlasts_it(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(t1=4.0, t2=4.0, timer_c=181.0)  # the §9.1 guard is 64*T1 = 256 s
    invite = outgoing()
    client = env.send(invite)
    env.layer.receive(response(invite, 180), UDP_PEER)
    cancel = client.txn.cancel_request()
    env.send(cancel)
    env.layer.receive(response(cancel, 200), UDP_PEER)
    env.pump_to(10)
    env.layer.receive(response(invite, 183), UDP_PEER)  # would restart Timer C
    env.pump_to(300, step=1)
    assert len(env.transport.times(is_method("CANCEL"))) == 1
    assert client.failures == [(256.0, "timeout")]


def test_timer_c_must_exceed_three_minutes() -> None:
    from pbxd.sip.timers import TimerSettings

    with pytest.raises(ValueError):
        TimerSettings(timer_c=60)


# -- non-INVITE: Timers E, F, K ------------------------------------------------------


def test_non_invite_over_udp_retransmits_doubling_to_t2_until_timer_f(env: Env) -> None:
    client = env.send(outgoing("OPTIONS"))
    assert client.txn.state is TransactionState.TRYING
    env.pump_to(40)
    # §17.1.2.2: T1 doubling, capped at T2 = 4 s.
    assert env.transport.times() == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert client.failures == [(32.0, "timeout")]


def test_non_invite_retransmits_every_t2_after_a_provisional(env: Env) -> None:
    register = outgoing("REGISTER")
    client = env.send(register)
    env.pump_to(0.6)
    env.layer.receive(response(register, 100, to_tag=None), UDP_PEER)
    assert client.txn.state is TransactionState.PROCEEDING
    env.pump_to(40)
    # Timer E was set for 1.5 before the 100 came; from then on, every T2.
    assert env.transport.times() == [0, 0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert client.statuses == [100]
    assert client.failures == [(32.0, "timeout")]


def test_non_invite_timer_values_follow_t1_and_t2(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(t1=0.25, t2=1.0)
    client = env.send(outgoing("MESSAGE"))
    env.pump_to(20)
    assert env.transport.times() == [0, 0.25, 0.75, 1.75, 2.75] + [3.75 + i for i in range(13)]
    assert client.failures == [(16.0, "timeout")]


def test_non_invite_final_completes_and_timer_k_absorbs_retransmissions(env: Env) -> None:
    options = outgoing("OPTIONS")
    client = env.send(options)
    env.pump_to(1)
    ok = response(options, 200)
    env.layer.receive(ok, UDP_PEER)
    assert client.txn.state is TransactionState.COMPLETED
    assert client.responses == [(1.0, ok)]
    env.pump_to(5.9)
    env.layer.receive(response(options, 200), UDP_PEER)
    env.layer.receive(response(options, 180), UDP_PEER)
    assert client.statuses == [200]
    assert env.transport.times() == [0, 0.5]  # no retransmission after the final
    env.pump_to(6)  # Timer K = T4 = 5 s
    assert client.txn.state is TransactionState.TERMINATED
    assert client.failures == []


def test_non_invite_over_tcp_is_sent_once_and_ends_with_its_final(env: Env) -> None:
    options = outgoing("OPTIONS", transport="TCP")
    client = env.send(options, TCP_PEER)
    env.pump_to(10)
    assert env.transport.times() == [0]
    env.layer.receive(response(options, 404), TCP_PEER)
    assert client.txn.state is TransactionState.TERMINATED  # Timer K = 0
    assert client.statuses == [404]


def test_non_invite_over_tcp_times_out_on_timer_f(env: Env) -> None:
    client = env.send(outgoing("BYE", transport="TCP"), TCP_PEER)
    env.pump_to(40)
    assert env.transport.times() == [0]
    assert client.failures == [(32.0, "timeout")]


# -- transport errors (§17.1.4) -------------------------------------------------------------


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
def test_transport_error_fails_the_transaction(env: Env, method: str) -> None:
    req = outgoing(method)
    client = env.send(req)
    env.pump_to(0.7)
    env.layer.transport_error(UDP_PEER, "ICMP port unreachable")
    assert client.failures == [(0.7, "transport")]
    assert client.txn.state is TransactionState.TERMINATED
    env.pump_to(40)
    assert env.transport.times() == [0, 0.5]
    assert client.failures == [(0.7, "transport")]


def test_transport_error_in_proceeding_fails_the_invite(env: Env) -> None:
    invite = outgoing(transport="TCP")
    client = env.send(invite, TCP_PEER)
    env.layer.receive(response(invite, 180), TCP_PEER)
    env.layer.transport_error(TCP_PEER, "connection reset")
    assert client.failures == [(0, "transport")]


def test_transport_error_while_first_sending_fails_before_send_request_returns(env: Env) -> None:
    env.transport.fail_next = "connection refused"
    client = env.send(outgoing("OPTIONS", transport="TCP"), TCP_PEER)
    assert client.failures == [(0, "transport")]
    assert client.txn.state is TransactionState.TERMINATED


def test_transport_error_after_the_final_response_ends_the_transaction_quietly(env: Env) -> None:
    invite = outgoing()
    client = env.send(invite)
    env.layer.receive(response(invite, 486), UDP_PEER)
    env.transport.fail_next = "ICMP port unreachable"
    env.layer.receive(response(invite, 486), UDP_PEER)  # the re-ACK fails
    assert client.txn.state is TransactionState.TERMINATED
    assert client.failures == []
    assert client.statuses == [486]


def test_transport_error_for_another_target_leaves_the_transaction_alone(env: Env) -> None:
    client = env.send(outgoing("OPTIONS"))
    env.layer.transport_error(TCP_PEER, "connection reset")
    assert client.txn.state is TransactionState.TRYING
    env.pump(40)
    assert client.failures == [(32.0, "timeout")]


# -- a request moved from UDP to TCP by the transport (§18.1.1) ----------------------------


def test_invite_moved_to_tcp_is_not_retransmitted_and_acks_over_tcp(env: Env) -> None:
    invite = outgoing()
    env.transport.divert_next = TCP_PEER
    client = env.send(invite, UDP_PEER)
    assert client.txn.target == TCP_PEER
    env.pump_to(5)
    assert env.transport.times() == [0]
    env.layer.receive(response(invite, 486), TCP_PEER)
    assert client.txn.state is TransactionState.TERMINATED  # Timer D = 0 over TCP
    assert [(s.message.method, s.target) for s in env.transport.sent] == [("INVITE", TCP_PEER), ("ACK", TCP_PEER)]


def test_non_invite_moved_to_tcp_times_out_without_retransmissions(env: Env) -> None:
    env.transport.divert_next = TCP_PEER
    client = env.send(outgoing("MESSAGE"), UDP_PEER)
    env.pump_to(40)
    assert env.transport.times() == [0]
    assert client.failures == [(32.0, "timeout")]


def test_moved_request_fails_on_errors_for_the_target_it_uses(env: Env) -> None:
    env.transport.divert_next = TCP_PEER
    moved = env.send(outgoing("OPTIONS"), UDP_PEER)
    env.transport.divert_next = TCP_PEER
    also_moved = env.send(outgoing("OPTIONS"), UDP_PEER)
    env.layer.transport_error(TCP_PEER, "connection refused")
    assert moved.failures == also_moved.failures == [(0, "transport")]
    env.transport.divert_next = TCP_PEER
    third = env.send(outgoing("OPTIONS"), UDP_PEER)
    env.layer.transport_error(UDP_PEER, "connection refused")  # reported for the original target
    assert third.failures == []  # the transaction follows the target it really uses
    env.layer.transport_error(TCP_PEER, "connection refused")
    assert third.failures == [(0, "transport")]


# -- what send_request refuses ----------------------------------------------------------------


def test_ack_is_not_a_client_transaction(env: Env) -> None:
    with pytest.raises(ValueError, match="ACK"):
        env.send(outgoing("ACK"))


@pytest.mark.parametrize("branch", [None, "1234", "z9hG4b"])
def test_request_without_an_rfc_3261_branch_is_refused(env: Env, branch: str | None) -> None:
    with pytest.raises(ValueError, match="branch"):
        env.send(outgoing("OPTIONS", branch=branch))
    assert env.transport.sent == []


def test_reusing_a_live_branch_is_refused(env: Env) -> None:
    options = outgoing("OPTIONS")
    env.send(options)
    with pytest.raises(ValueError, match="already running"):
        env.send(outgoing("OPTIONS", branch=options.via.branch))
    env.pump(40)


def test_final_response_reaches_the_tu_once_with_the_transaction_state_settled(env: Env) -> None:
    """A TU reacting to a response already sees the transaction's next state."""
    options = outgoing("OPTIONS", transport="TCP")
    seen: list[TransactionState] = []
    txn = env.layer.send_request(options, TCP_PEER, lambda r: seen.append(txn.state), lambda reason: None)
    env.layer.receive(response(options, 200), TCP_PEER)
    assert seen == [TransactionState.TERMINATED]
    assert isinstance(txn.final_response, Response)
