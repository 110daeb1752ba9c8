"""REFER (RFC 3515), Referred-By, Replaces (RFC 3891) and sipfrag NOTIFYs (RFC 3420)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxd.sip.dialog import Dialog, DialogTable
from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address, Via
from pbxd.sip.message import Request, make_response, parse_message
from pbxd.sip.refer import (
    SIPFRAG_CONTENT_TYPE,
    Event,
    Refer,
    ReferTo,
    Replaces,
    SipFrag,
    SubscriptionState,
    format_refer_to,
    parse_refer,
    parse_sipfrag,
    refer_notify,
    replaces_refusal,
    sipfrag,
)
from pbxd.sip.transaction import new_branch
from pbxd.sip.uri import parse_uri


def via() -> Via:
    return Via("UDP", "pbx.example.com", 5060, (("branch", new_branch()),))


def request(method: str, *headers: str, tag: str | None = None) -> Request:
    to = "<sip:pbx@pbx.example.com>" + (f";tag={tag}" if tag else "")
    lines = [
        f"{method} sip:pbx@pbx.example.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK776asdhds",
        "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=alice-tag",
        f"To: {to}",
        "Call-ID: call-1@192.0.2.10",
        f"CSeq: 7 {method}",
        "Contact: <sip:alice@192.0.2.10>",
        *headers,
        "Content-Length: 0",
    ]
    parsed = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(parsed, Request)
    return parsed


def confirmed_pair() -> tuple[Dialog, Dialog]:
    """(pbxd's dialog as UAS, the phone's dialog as UAC) for one call."""
    invite = request("INVITE")
    ours = Dialog.from_uas(invite, "pbx-tag", local_contact=Address.parse("<sip:pbx@192.0.2.1>"))
    ok = make_response(invite, 200)
    ok.set("To", "<sip:pbx@pbx.example.com>;tag=pbx-tag")
    ok.set("Contact", "<sip:pbx@192.0.2.1>")
    ours.response_sent(invite, ok)
    return ours, Dialog.from_uac(invite, ok)


# -- Replaces ------------------------------------------------------------------------------------------


def test_replaces_parse_and_format():
    # RFC 3891 §6.1 examples.
    replaces = Replaces.parse("98732@sip.example.com;from-tag=r33th4x0r;to-tag=ff87ff")
    assert replaces == Replaces("98732@sip.example.com", "ff87ff", "r33th4x0r")
    assert str(replaces) == "98732@sip.example.com;to-tag=ff87ff;from-tag=r33th4x0r"
    early = Replaces.parse("12adf2f34456gs5;to-tag=12345;from-tag=54321;early-only")
    assert early.early_only and Replaces.parse(str(early)) == early
    assert Replaces.parse(" x@y ; To-Tag=a ; FROM-TAG=b ").dialog_id == ("x@y", "a", "b")


@pytest.mark.parametrize(
    "text",
    ["", ";to-tag=a;from-tag=b", "x y;to-tag=a;from-tag=b", "x;to-tag=a", "x;from-tag=b",
     "x;to-tag;from-tag=b", "x;to-tag=a;to-tag=c;from-tag=b", "x;to-tag=a;from-tag=b;=", "x;to-tag=a b;from-tag=c"],
)
def test_malformed_replaces(text):
    with pytest.raises(SipParseError) as caught:
        Replaces.parse(text)
    assert caught.value.status == 400


def test_replaces_names_the_dialog_as_the_far_end_sees_it():
    ours, phones = confirmed_pair()
    # pbxd tells the phone which of its dialogs to replace: the phone finds it
    # under its own (local) tag.
    table = DialogTable()
    table.add(phones)
    assert table.get(Replaces.for_dialog(ours).dialog_id) is phones
    # And the phone's Replaces for its dialog finds ours at pbxd.
    table = DialogTable()
    table.add(ours)
    assert table.get(Replaces.for_dialog(phones).dialog_id) is ours


def test_replaces_refusal():
    ours, phones = confirmed_pair()
    plain = Replaces.for_dialog(phones)
    early_only = Replaces.for_dialog(phones, early_only=True)
    assert replaces_refusal(plain, None) == 481
    assert replaces_refusal(plain, ours) is None
    assert replaces_refusal(early_only, ours) == 486
    invite = request("INVITE")
    ringing_in = Dialog.from_uas(invite, "t")  # early, we are the callee
    assert replaces_refusal(plain, ringing_in) == 481
    ringing = make_response(invite, 180)
    ringing.set("To", "<sip:pbx@pbx.example.com>;tag=t")
    ringing_out = Dialog.from_uac(invite, ringing)  # early, we are the caller
    assert replaces_refusal(early_only, ringing_out) is None
    ours.terminate()
    assert replaces_refusal(plain, ours) == 603


# -- Refer-To, Referred-By, REFER --------------------------------------------------------------------------


def test_refer_to_with_embedded_replaces():
    # RFC 3891 §7 shape: Replaces escaped inside the Refer-To URI.
    refer_to = ReferTo.parse(
        "<sips:bob@bobphone.example.com?Replaces=12345%40bobphone.example.com"
        "%3Bto-tag%3D12345%3Bfrom-tag%3D5FFE-3994>"
    )
    assert refer_to.target == parse_uri("sips:bob@bobphone.example.com")
    assert refer_to.replaces == Replaces("12345@bobphone.example.com", "12345", "5FFE-3994")
    assert refer_to.headers == ()


def test_refer_to_other_uri_headers_are_kept_for_the_new_request():
    refer_to = ReferTo.parse("<sip:carol@example.com;transport=tcp?Require=replaces&X-Note=a%20b>;lr-ish")
    assert refer_to.target == parse_uri("sip:carol@example.com;transport=tcp")
    assert refer_to.headers == (("Require", "replaces"), ("X-Note", "a b"))
    assert refer_to.replaces is None
    assert refer_to.address.has_param("lr-ish")


def test_refer_to_plain_and_non_sip():
    assert ReferTo.parse("sip:carol@example.com").target == parse_uri("sip:carol@example.com")
    tel = ReferTo.parse("<tel:+15551234567>")
    assert tel.target == parse_uri("tel:+15551234567") and tel.replaces is None


@pytest.mark.parametrize(
    "value",
    ["", "<sip:carol@example.com", "sip:carol@example.com?Replaces=x",
     "<sip:c@example.com?Replaces=abc>", "<sip:c@example.com?Replaces=a%3Bto-tag%3D1%3Bfrom-tag%3D2&Replaces=b>"],
)
def test_malformed_refer_to(value):
    with pytest.raises(SipParseError):
        ReferTo.parse(value)


def test_format_refer_to_round_trips():
    ours, _ = confirmed_pair()
    replaces = Replaces.for_dialog(ours, early_only=True)
    value = format_refer_to(Address.parse('"Carol" <sip:carol@example.com;transport=tcp>'), replaces)
    assert "?Replaces=" in value and ";" not in value.split("?", 1)[1].split(">")[0]
    parsed = ReferTo.parse(value)
    assert parsed.replaces == replaces
    assert parsed.target == parse_uri("sip:carol@example.com;transport=tcp")
    assert parsed.address.display_name == "Carol"
    assert format_refer_to(parse_uri("sip:dave@example.com")) == "<sip:dave@example.com>"
    with pytest.raises(ValueError):
        format_refer_to(parse_uri("tel:+15551234567"), replaces)


def test_parse_refer():
    refer = parse_refer(request("REFER", "Refer-To: <sip:carol@example.com>",
                                'Referred-By: <sip:alice@example.com>;cid="20398823.2UWQFN309shb3@ref.example"'))
    assert refer == Refer(ReferTo.parse("<sip:carol@example.com>"),
                          Address.parse('<sip:alice@example.com>;cid="20398823.2UWQFN309shb3@ref.example"'))
    assert refer.subscription
    compact = parse_refer(request("REFER", "r: <sip:carol@example.com>", "b: <sip:alice@example.com>",
                                  "Refer-Sub: false"))
    assert compact.refer_to.target == parse_uri("sip:carol@example.com")
    assert compact.referred_by == Address.parse("<sip:alice@example.com>")
    assert not compact.subscription


@pytest.mark.parametrize(
    "headers",
    [(), ("Refer-To: <sip:a@example.com>", "Refer-To: <sip:b@example.com>"),
     ("Refer-To: <sip:a@example.com>", "Refer-Sub: maybe"), ("Refer-To: not a uri",),
     ("Refer-To: <sip:a@example.com>", "Referred-By: <nope")],
)
def test_malformed_refer_is_400(headers):
    with pytest.raises(SipParseError) as caught:
        parse_refer(request("REFER", *headers))
    assert caught.value.status == 400


# -- NOTIFY and sipfrag ---------------------------------------------------------------------------------------


def test_sipfrag_bodies():
    assert sipfrag(100) == b"SIP/2.0 100 Trying\r\n"
    assert sipfrag(200) == b"SIP/2.0 200 OK\r\n"
    assert sipfrag(503, "Service Unavailable") == b"SIP/2.0 503 Service Unavailable\r\n"
    assert parse_sipfrag(sipfrag(180)) == SipFrag(180, "Ringing")
    assert parse_sipfrag(b"SIP/2.0 603 Declined\r\nContent-Length: 0\r\n\r\n").is_final
    assert not parse_sipfrag(b"sip/2.0 183 Session Progress").is_final


@pytest.mark.parametrize("body", [b"", b"\xff", b"SIP/2.0 99 Low", b"SIP/2.0 200", b"HTTP/1.1 200 OK\r\n",
                                  b"INVITE sip:a@b SIP/2.0\r\n", b"\r\nSIP/2.0 200 OK\r\n"])
def test_malformed_sipfrag(body):
    with pytest.raises(SipParseError):
        parse_sipfrag(body)


def test_refer_notify_progress_then_final():
    ours, phones = confirmed_pair()
    refer = phones.create_request("REFER", via(), extra_headers=[("Refer-To", "<sip:carol@example.com>")])
    assert ours.receive_request(parse_message(refer.to_bytes())) is None

    trying = parse_message(refer_notify(ours, via(), 100, refer_seq=refer.cseq.seq).to_bytes())
    assert trying.method == "NOTIFY" and trying.call_id == "call-1@192.0.2.10"
    assert Event.parse(trying.get("event")) == Event("refer", str(refer.cseq.seq))
    state = SubscriptionState.parse(trying.get("subscription-state"))
    assert state == SubscriptionState("active", expires=60) and not state.is_terminated
    assert trying.get("content-type") == SIPFRAG_CONTENT_TYPE
    assert parse_sipfrag(trying.body) == SipFrag(100, "Trying")
    assert trying.contacts == [Address.parse("<sip:pbx@192.0.2.1>")]  # NOTIFY carries a Contact

    done = parse_message(refer_notify(ours, via(), 200).to_bytes())
    assert done.get("event") == "refer"
    assert done.get("subscription-state") == "terminated;reason=noresource"
    assert SubscriptionState.parse(done.get("subscription-state")).is_terminated
    assert done.body == b"SIP/2.0 200 OK\r\n"
    assert done.cseq.seq == trying.cseq.seq + 1
    # The phone's dialog takes both in order.
    assert phones.receive_request(trying) is None and phones.receive_request(done) is None


def test_event_and_subscription_state_parsing():
    assert Event.parse("Refer ; id=93809824") == Event("refer", "93809824")
    assert str(Event("refer", "7")) == "refer;id=7"
    assert SubscriptionState.parse("TERMINATED;reason=Timeout;retry-after=5") == SubscriptionState(
        "terminated", reason="timeout")
    assert str(SubscriptionState("pending", expires=30)) == "pending;expires=30"
    for bad in ("", "a b", "active;expires=soon", "active;expires", "active;expires=99999999999"):
        with pytest.raises(SipParseError):
            SubscriptionState.parse(bad)
    for bad in ("", "refer x", "refer;id=a b"):
        with pytest.raises(SipParseError):
            Event.parse(bad)


# -- any input ---------------------------------------------------------------------------------------------------


@given(st.text(max_size=80))
def test_any_replaces_text_parses_or_fails_cleanly(text):
    try:
        replaces = Replaces.parse(text)
    except SipParseError:
        return
    assert Replaces.parse(str(replaces)) == replaces


@given(st.text(max_size=80))
def test_any_refer_to_parses_or_fails_cleanly(text):
    try:
        ReferTo.parse(text)
    except SipParseError:
        pass


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=";"), min_size=1,
               max_size=30),
       st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,16}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,16}", fullmatch=True), st.booleans())
def test_replaces_survives_the_trip_through_a_refer_to(call_id, to_tag, from_tag, early_only):
    replaces = Replaces(call_id, to_tag, from_tag, early_only)
    value = format_refer_to(parse_uri("sip:carol@example.com"), replaces)
    assert ReferTo.parse(value).replaces == replaces
    # and through a whole REFER on the wire
    assert parse_refer(request("REFER", f"Refer-To: {value}")).refer_to.replaces == replaces


@given(st.binary(max_size=60))
def test_any_sipfrag_parses_or_fails_cleanly(body):
    try:
        frag = parse_sipfrag(body)
    except SipParseError:
        return
    assert 100 <= frag.status <= 699
