"""Dialogs (RFC 3261 §12): creation on both sides, requests inside them, state, the table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxd.sip.dialog import Dialog, DialogState, DialogTable, Role
from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address, Via
from pbxd.sip.message import Request, Response, make_response, parse_message
from pbxd.sip.transaction import new_branch
from pbxd.sip.uri import SipURI, parse_uri

CALL_ID = "a84b4c76e66710@pc33.atlanta.example.com"
ALICE_CONTACT = "<sip:alice@pc33.atlanta.example.com>"
BOB_CONTACT = "<sip:bob@192.0.2.4>"


def via() -> Via:
    return Via("UDP", "pbx.example.com", 5060, (("branch", new_branch()), ("rport", None)))


def make_invite(*, record_route: list[str] = (), contact: str | None = ALICE_CONTACT,
                uri: str = "sip:bob@biloxi.example.com", cseq: int = 314159) -> Request:
    lines = [
        f"INVITE {uri} SIP/2.0",
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8",
        *[f"Record-Route: {rr}" for rr in record_route],
        "Max-Forwards: 70",
        'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
        "To: Bob <sip:bob@biloxi.example.com>",
        f"Call-ID: {CALL_ID}",
        f"CSeq: {cseq} INVITE",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines.append("Content-Length: 0")
    request = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(request, Request)
    return request


def answer(request: Request, status: int, *, tag: str | None = "a6c85cf", contact: str | None = BOB_CONTACT,
           record_route: list[str] | None = None) -> Response:
    response = make_response(request, status)
    if tag is not None:
        response.set("To", str(request.to_addr.with_param("tag", tag)))
    if contact is not None:
        response.set("Contact", contact)
    for rr in request.get_all("record-route") if record_route is None else record_route:
        response.add("Record-Route", rr)
    return parse_message(response.to_bytes())  # type: ignore[return-value]


def in_dialog(dialog: Dialog, method: str, **kwargs) -> Request:
    """A request built by the dialog, as the peer would parse it off the wire."""
    request = dialog.create_request(method, via(), **kwargs)
    parsed = parse_message(request.to_bytes())
    assert isinstance(parsed, Request)
    return parsed


# -- creation -----------------------------------------------------------------------------------------


def test_uas_dialog_from_invite():
    invite = make_invite(record_route=["<sip:p1.example.com;lr>, <sip:p2.example.com;lr;ftag=x>"])
    dialog = Dialog.from_uas(invite, "pbx-tag", local_contact=Address.parse("<sip:pbx@192.0.2.1>"))
    assert dialog.id == (CALL_ID, "pbx-tag", "1928301774")
    assert dialog.role is Role.UAS and dialog.state is DialogState.EARLY
    assert str(dialog.local_uri) == "Bob <sip:bob@biloxi.example.com>"
    assert str(dialog.remote_uri) == "Alice <sip:alice@atlanta.example.com>"  # no tag
    assert dialog.remote_target == parse_uri("sip:alice@pc33.atlanta.example.com")
    # §12.1.1: Record-Route in order, URI parameters kept.
    assert [str(r) for r in dialog.route_set] == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr;ftag=x>"]
    assert dialog.remote_seq == 314159 and dialog.local_seq is None
    assert not dialog.secure


def test_secure_only_for_sips_over_tls():
    sips = make_invite(uri="sips:bob@biloxi.example.com", contact="<sips:alice@pc33.atlanta.example.com>")
    assert Dialog.from_uas(sips, "t", tls=True).secure
    assert not Dialog.from_uas(sips, "t", tls=False).secure
    assert not Dialog.from_uas(make_invite(), "t", tls=True).secure


@pytest.mark.parametrize(
    "invite",
    [
        lambda: make_invite(contact=None),
        lambda: make_invite(contact="<tel:+15551234567>"),
        lambda: make_invite(record_route=["<tel:+15551234567>"]),
    ],
    ids=["no-contact", "tel-contact", "tel-record-route"],
)
def test_uas_dialog_refuses_unroutable_requests_with_400(invite):
    with pytest.raises(SipParseError) as caught:
        Dialog.from_uas(invite(), "t")
    assert caught.value.status == 400


def test_uac_dialog_early_then_confirmed():
    invite = make_invite()
    ringing = answer(invite, 180, record_route=["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"])
    dialog = Dialog.from_uac(invite, ringing)
    assert dialog.id == (CALL_ID, "1928301774", "a6c85cf")
    assert dialog.role is Role.UAC and dialog.state is DialogState.EARLY
    assert str(dialog.local_uri) == "Alice <sip:alice@atlanta.example.com>"
    assert str(dialog.remote_uri) == "Bob <sip:bob@biloxi.example.com>"
    assert dialog.remote_target == parse_uri("sip:bob@192.0.2.4")
    # §12.1.2: Record-Route reversed.
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert dialog.local_seq == 314159 and dialog.remote_seq is None
    assert dialog.local_contact == Address.parse(ALICE_CONTACT)

    # §13.2.2.4: the 2xx confirms and its Record-Route becomes the route set.
    ok = answer(invite, 200, contact="<sip:bob@192.0.2.5>", record_route=["<sip:p3.example.com;lr>"])
    dialog.receive_response(ok)
    assert dialog.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p3.example.com;lr"]
    assert dialog.remote_target == parse_uri("sip:bob@192.0.2.5")


def test_uac_dialog_from_2xx_and_from_tagless_2xx():
    invite = make_invite()
    assert Dialog.from_uac(invite, answer(invite, 200)).state is DialogState.CONFIRMED
    # An RFC 2543 UAS sends no tag: the remote tag is null (§12.1.2).
    tagless = Dialog.from_uac(invite, answer(invite, 200, tag=None))
    assert tagless.remote_tag is None and tagless.state is DialogState.CONFIRMED
    assert "tag" not in str(in_dialog(tagless, "BYE").to_addr)


def test_provisional_without_contact_targets_the_request_uri_until_one_arrives():
    invite = make_invite()
    dialog = Dialog.from_uac(invite, answer(invite, 180, contact=None))
    assert dialog.remote_target == parse_uri("sip:bob@biloxi.example.com")
    dialog.receive_response(answer(invite, 183))
    assert dialog.remote_target == parse_uri("sip:bob@192.0.2.4")


@pytest.mark.parametrize("status,tag", [(100, "x"), (180, None), (486, "x")])
def test_responses_that_make_no_dialog(status, tag):
    invite = make_invite()
    with pytest.raises(ValueError):
        Dialog.from_uac(invite, answer(invite, status, tag=tag))


def test_2xx_without_contact_keeps_the_request_uri_as_target():
    invite = make_invite()
    assert Dialog.from_uac(invite, answer(invite, 200, contact=None)).remote_target == invite.ruri


def test_uac_dialog_refuses_a_non_sip_contact_as_a_dropped_response():
    invite = make_invite()
    with pytest.raises(SipParseError) as caught:
        Dialog.from_uac(invite, answer(invite, 200, contact="<tel:+15551234567>"))
    assert caught.value.status is None


# -- requests inside the dialog -------------------------------------------------------------------------


def test_request_with_loose_routes():
    invite = make_invite(record_route=["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"])
    dialog = Dialog.from_uac(invite, answer(invite, 200))
    hop_via = via()
    bye = dialog.create_request("BYE", hop_via)
    assert bye.uri == "sip:bob@192.0.2.4"
    assert bye.get_all("route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert bye.via == hop_via and len(bye.vias) == 1
    assert bye.cseq.seq == 314160 and bye.cseq.method == "BYE"
    assert bye.max_forwards == 70
    assert bye.from_addr.tag == "1928301774" and bye.to_addr.tag == "a6c85cf"
    assert bye.call_id == CALL_ID
    assert "contact" not in bye  # BYE carries no Contact
    assert dialog.next_target(bye) == parse_uri("sip:p2.example.com;lr")
    assert dialog.next_target() == parse_uri("sip:p2.example.com;lr")
    # It parses back as the same request.
    assert parse_message(bye.to_bytes()).to_bytes() == bye.to_bytes()


def test_request_through_a_strict_router():
    # §12.2.1.1: the first route lacks lr: it becomes the Request-URI (without
    # a method parameter), and the remote target the last Route.
    # (Record-Route is reversed by the UAC: the strict router is nearest to it.)
    invite = make_invite(record_route=["<sip:p1.example.com;lr>", "<sip:strict.example.com;method=INVITE;x=1>"])
    dialog = Dialog.from_uac(invite, answer(invite, 200))
    assert not dialog.loose_routing
    info = dialog.create_request("INFO", via(), body=b"Signal=5\r\n", content_type="application/dtmf-relay")
    assert info.uri == "sip:strict.example.com;x=1"
    assert info.get_all("route") == ["<sip:p1.example.com;lr>", "<sip:bob@192.0.2.4>"]
    assert dialog.next_target(info) == parse_uri("sip:strict.example.com;x=1")
    assert dialog.next_target() == parse_uri("sip:strict.example.com;x=1")
    assert info.body == b"Signal=5\r\n" and info.get("content-type") == "application/dtmf-relay"


def test_request_without_routes_goes_to_the_remote_target():
    invite = make_invite()
    dialog = Dialog.from_uac(invite, answer(invite, 200))
    options = dialog.create_request("OPTIONS", via())
    assert options.uri == "sip:bob@192.0.2.4" and "route" not in options
    assert dialog.next_target(options) == dialog.next_target() == parse_uri("sip:bob@192.0.2.4")


def test_target_refresh_requests_carry_our_contact():
    contact = Address.parse("<sip:pbx@192.0.2.1:5070;transport=tcp>")
    dialog = Dialog.from_uas(make_invite(), "pbx-tag", local_contact=contact)
    for method in ("INVITE", "UPDATE", "REFER", "NOTIFY"):
        assert dialog.create_request(method, via()).contacts == [contact]
    assert "contact" not in dialog.create_request("INFO", via())


def test_uas_dialog_picks_a_first_cseq_then_counts_up():
    dialog = Dialog.from_uas(make_invite(), "pbx-tag")
    first = dialog.create_request("INFO", via()).cseq.seq
    assert 0 < first < 2**31
    assert dialog.create_request("UPDATE", via()).cseq.seq == first + 1
    assert dialog.local_seq == first + 1
    assert dialog.remote_seq == 314159  # untouched by our requests


def test_uas_request_addresses_the_caller():
    dialog = Dialog.from_uas(make_invite(record_route=["<sip:p1.example.com;lr>"]), "pbx-tag")
    bye = in_dialog(dialog, "BYE")
    assert bye.uri == "sip:alice@pc33.atlanta.example.com"
    assert bye.get_all("route") == ["<sip:p1.example.com;lr>"]
    assert str(bye.from_addr) == "Bob <sip:bob@biloxi.example.com>;tag=pbx-tag"
    assert str(bye.to_addr) == "Alice <sip:alice@atlanta.example.com>;tag=1928301774"


def test_requests_that_create_request_refuses():
    dialog = Dialog.from_uas(make_invite(), "t")
    for method in ("ACK", "CANCEL"):
        with pytest.raises(ValueError):
            dialog.create_request(method, via())
    with pytest.raises(ValueError):
        dialog.create_request("INFO", via(), body=b"x")  # a body needs a type
    dialog.terminate()
    with pytest.raises(ValueError):
        dialog.create_request("INFO", via())


def test_ack_for_2xx():
    invite = make_invite(record_route=["<sip:p1.example.com;lr>"])
    dialog = Dialog.from_uac(invite, answer(invite, 180))
    ok = answer(invite, 200, contact="<sip:bob@192.0.2.9>")
    dialog.receive_response(ok)
    ack_via = via()
    ack = dialog.create_ack(ok, ack_via, body=b"v=0\r\n", content_type="application/sdp")
    assert ack.method == "ACK" and ack.cseq.seq == 314159 and ack.cseq.method == "ACK"
    assert ack.uri == "sip:bob@192.0.2.9" and ack.get_all("route") == ["<sip:p1.example.com;lr>"]
    assert ack.via.branch == ack_via.branch != invite.via.branch
    assert ack.body == b"v=0\r\n"
    assert "contact" not in ack
    assert dialog.local_seq == 314159  # the ACK takes no new number
    with pytest.raises(ValueError):
        dialog.create_ack(answer(invite, 486), via())


def test_sending_bye_terminates_the_dialog():
    table = DialogTable()
    invite = make_invite()
    dialog = table.dialog_for_response(invite, answer(invite, 200))
    assert len(table) == 1
    dialog.create_request("BYE", via())
    assert dialog.state is DialogState.TERMINATED
    assert len(table) == 0 and table.get(dialog.id) is None


# -- what the peer sends ---------------------------------------------------------------------------------


def test_remote_cseq_order():
    dialog = Dialog.from_uas(make_invite(cseq=10), "t")
    peer = Dialog.from_uac(make_invite(cseq=10), answer(make_invite(cseq=10), 200, tag="t"))
    info = in_dialog(peer, "INFO")  # CSeq 11
    assert dialog.check_remote_seq(info) is None and dialog.remote_seq == 11
    stale = make_invite(cseq=9)
    assert dialog.check_remote_seq(stale) == 500  # §12.2.2
    assert dialog.remote_seq == 11
    assert dialog.check_remote_seq(info) is None  # the same number again is not lower
    ack = peer.create_ack(answer(make_invite(cseq=10), 200, tag="t"), via())
    assert dialog.check_remote_seq(ack) is None and dialog.remote_seq == 11


@given(st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=30))
def test_remote_cseq_accepts_exactly_the_requests_not_older_than_any_before(seqs):
    dialog = Dialog.from_uas(make_invite(cseq=0), "t")
    highest = 0
    for seq in seqs:
        request = make_invite(cseq=seq)
        outcome = dialog.check_remote_seq(request)
        assert outcome == (500 if seq < highest else None)
        highest = max(highest, seq)
        assert dialog.remote_seq == highest


def test_peer_bye_terminates_and_an_older_one_is_refused():
    table = DialogTable()
    invite = make_invite(cseq=5)
    dialog = Dialog.from_uas(invite, "pbx-tag")
    table.add(dialog)
    dialog.response_sent(invite, answer(invite, 200, tag="pbx-tag"))
    caller = Dialog.from_uac(invite, answer(invite, 200, tag="pbx-tag"))
    bye = in_dialog(caller, "BYE")
    assert table.match_request(bye) is dialog
    old = bye.copy()
    old.set("CSeq", "4 BYE")
    assert dialog.receive_request(old) == 500 and dialog.state is DialogState.CONFIRMED
    assert dialog.receive_request(bye) is None
    assert dialog.state is DialogState.TERMINATED and len(table) == 0


def test_uas_initial_invite_answers():
    invite = make_invite()
    confirmed = Dialog.from_uas(invite, "t")
    confirmed.response_sent(invite, answer(invite, 180, tag="t"))
    assert confirmed.state is DialogState.EARLY
    confirmed.response_sent(invite, answer(invite, 200, tag="t"))
    assert confirmed.state is DialogState.CONFIRMED
    refused = Dialog.from_uas(invite, "t")
    refused.response_sent(invite, answer(invite, 486, tag="t"))
    assert refused.state is DialogState.TERMINATED


def test_uas_target_refresh_takes_effect_on_2xx_only():
    invite = make_invite()
    dialog = Dialog.from_uas(invite, "t")
    dialog.response_sent(invite, answer(invite, 200, tag="t"))
    caller = Dialog.from_uac(invite, answer(invite, 200, tag="t"))
    caller.local_contact = Address.parse("<sip:alice@198.51.100.7:5062>")
    reinvite = in_dialog(caller, "INVITE")
    assert dialog.receive_request(reinvite) is None
    assert dialog.remote_target == parse_uri("sip:alice@pc33.atlanta.example.com")
    dialog.response_sent(reinvite, answer(reinvite, 491, tag=None))
    assert dialog.remote_target == parse_uri("sip:alice@pc33.atlanta.example.com")  # refused: no change
    update = in_dialog(caller, "UPDATE")
    dialog.receive_request(update)
    dialog.response_sent(update, answer(update, 200, tag=None))
    assert dialog.remote_target == parse_uri("sip:alice@198.51.100.7:5062")


def test_uac_target_refresh_and_a_late_retransmission():
    invite = make_invite()
    ok = answer(invite, 200)
    dialog = Dialog.from_uac(invite, ok)
    reinvite = dialog.create_request("INVITE", via())
    dialog.receive_response(answer(reinvite, 200, tag=None, contact="<sip:bob@203.0.113.8>"))
    assert dialog.remote_target == parse_uri("sip:bob@203.0.113.8")
    # The first INVITE's 2xx retransmitted now must not move the target back.
    dialog.receive_response(ok)
    assert dialog.remote_target == parse_uri("sip:bob@203.0.113.8")
    # A 2xx to a request that is no target refresh changes nothing.
    info = dialog.create_request("INFO", via())
    dialog.receive_response(answer(info, 200, tag=None, contact="<sip:elsewhere@203.0.113.9>"))
    assert dialog.remote_target == parse_uri("sip:bob@203.0.113.8")
    assert dialog.state is DialogState.CONFIRMED


@pytest.mark.parametrize("status", [481, 408])
def test_481_or_408_to_a_request_ends_the_dialog(status):
    invite = make_invite()
    dialog = Dialog.from_uac(invite, answer(invite, 200))
    info = dialog.create_request("INFO", via())
    dialog.receive_response(answer(info, status, tag=None))
    assert dialog.state is DialogState.TERMINATED


def test_early_dialog_ends_on_a_final_failure():
    invite = make_invite()
    dialog = Dialog.from_uac(invite, answer(invite, 180))
    dialog.receive_response(answer(invite, 486))
    assert dialog.state is DialogState.TERMINATED


def test_both_ends_agree():
    """A dialog built by each side from the same exchange routes requests to the other."""
    invite = make_invite(record_route=["<sip:p1.example.com;lr>"])
    callee = Dialog.from_uas(invite, "callee-tag", local_contact=Address.parse(BOB_CONTACT))
    ok = answer(invite, 200, tag="callee-tag")
    callee.response_sent(invite, ok)
    caller = Dialog.from_uac(invite, ok)
    callee_side, caller_side = DialogTable(), DialogTable()
    callee_side.add(callee)
    caller_side.add(caller)
    for _ in range(3):
        assert callee_side.match_request(in_dialog(caller, "INFO")) is callee
        assert caller_side.match_request(in_dialog(callee, "INFO")) is caller
    request = in_dialog(caller, "UPDATE")
    assert callee.receive_request(request) is None
    response = make_response(request, 200)
    assert caller_side.match_response(response) is caller
    assert callee.remote_seq == request.cseq.seq


# -- the table and forking ------------------------------------------------------------------------------


def test_forked_invite_makes_a_dialog_per_answering_fork():
    table = DialogTable()
    invite = make_invite()
    assert table.dialog_for_response(invite, answer(invite, 100, tag=None)) is None
    assert table.dialog_for_response(invite, answer(invite, 180, tag=None)) is None
    first = table.dialog_for_response(invite, answer(invite, 180, tag="fork-1", contact="<sip:bob@192.0.2.11>"))
    second = table.dialog_for_response(invite, answer(invite, 183, tag="fork-2", contact="<sip:bob@192.0.2.12>"))
    assert first is not second and len(table) == 2
    assert table.dialog_for_response(invite, answer(invite, 180, tag="fork-1")) is first
    assert {d.remote_tag for d in table.forks(CALL_ID, "1928301774")} == {"fork-1", "fork-2"}

    won = table.dialog_for_response(invite, answer(invite, 200, tag="fork-2", contact="<sip:bob@192.0.2.12>"))
    assert won is second and won.state is DialogState.CONFIRMED
    assert first.state is DialogState.EARLY
    # The INVITE transaction ends: forks that never answered 2xx are gone (§13.2.2.4).
    table.end_early(CALL_ID, "1928301774")
    assert first.state is DialogState.TERMINATED
    assert list(table) == [second] and len(table) == 1


def test_a_late_2xx_from_another_fork_makes_its_own_dialog():
    table = DialogTable()
    invite = make_invite()
    one = table.dialog_for_response(invite, answer(invite, 200, tag="fork-1"))
    two = table.dialog_for_response(invite, answer(invite, 200, tag="fork-2"))
    assert one is not two and two.state is DialogState.CONFIRMED  # to be ACKed and sent BYE
    assert len(table.forks(CALL_ID, "1928301774")) == 2


def test_final_failure_ends_every_early_fork():
    table = DialogTable()
    invite = make_invite()
    table.dialog_for_response(invite, answer(invite, 180, tag="fork-1"))
    table.dialog_for_response(invite, answer(invite, 180, tag="fork-2"))
    assert table.dialog_for_response(invite, answer(invite, 486, tag="fork-3")) is None
    assert len(table) == 0 and table.forks(CALL_ID, "1928301774") == []


def test_table_lookups():
    table = DialogTable()
    invite = make_invite()
    dialog = Dialog.from_uas(invite, "pbx-tag")
    table.add(dialog)
    with pytest.raises(ValueError):
        table.add(Dialog.from_uas(invite, "pbx-tag"))
    assert table.get((CALL_ID, "pbx-tag", "1928301774")) is dialog
    assert table.get((CALL_ID, "pbx-tag", "other")) is None
    assert table.match_request(invite) is None  # no To tag: not inside a dialog
    ours = answer(invite, 200, tag="pbx-tag")
    assert table.match_response(ours) is None  # From tag is the peer's, not ours
    dialog.terminate()
    dialog.terminate()
    assert len(table) == 0
    with pytest.raises(ValueError):
        table.add(dialog)


def test_table_stays_bounded_over_many_calls():
    table = DialogTable()
    for n in range(200):
        invite = make_invite(cseq=n + 1)
        invite.set("Call-ID", f"call-{n}")
        dialog = table.dialog_for_response(invite, answer(invite, 200, tag=f"t{n}"))
        assert dialog is not None
        if n % 2:
            dialog.create_request("BYE", via())
        else:
            dialog.receive_request(in_dialog(Dialog.from_uas(invite, f"t{n}"), "BYE"))
    assert len(table) == 0 and list(table) == []


def test_next_target_refuses_a_route_that_is_not_sip():
    dialog = Dialog.from_uas(make_invite(), "t")
    request = dialog.create_request("INFO", via())
    request.add("Route", "<tel:+15551234567>")
    with pytest.raises(SipParseError):
        dialog.next_target(request)


def test_next_target_type():
    dialog = Dialog.from_uas(make_invite(), "t")
    assert isinstance(dialog.next_target(), SipURI)
