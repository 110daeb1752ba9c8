"""RFC 4475 (SIP torture test messages) against pbxd's message parser.

One test per message of §3.1.1 (valid: parsed and understood) and §3.1.2
(invalid: refused the way the RFC says), plus the parser-level part of the
§3.2-§3.4 messages. The messages are written out here as the RFC prints them:
one line per line, each ending in CRLF on the wire (``crlf``), with
``<repeat count=N>`` spelled as Python repetition and ``<hex>`` as
``bytes.fromhex`` or ``\\x`` escapes.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address, unquoted
from pbxd.sip.message import Request, Response, make_response, parse_message
from pbxd.sip.uri import SipURI, parse_uri


def crlf(text: bytes) -> bytes:
    """The message on the wire: the RFC prints lines, SIP ends each in CRLF."""
    return text.replace(b"\n", b"\r\n")


def sdp(*lines: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


SDP_TAIL = (b"m=audio 49217 RTP/AVP 0 12", b"m=video 3227 RTP/AVP 31", b"a=rtpmap:31 LPC")


def sdp_for(address: bytes, time: bytes = b"0 0", origin: bytes | None = None) -> bytes:
    return sdp(
        b"v=0",
        b"o=mhandley 29739 7272939 IN IP4 " + (origin or address),
        b"s=-",
        b"c=IN IP4 " + address,
        b"t=" + time,
        *SDP_TAIL,
    )


def request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def response(data: bytes) -> Response:
    message = parse_message(data)
    assert isinstance(message, Response)
    return message


def refused(data: bytes, status: int | None, reason: str) -> SipParseError:
    with pytest.raises(SipParseError, match=reason) as info:
        parse_message(data)
    error = info.value
    assert error.status == status
    return error


def assert_answerable(error: SipParseError) -> None:
    """The refused request still yields a response that routes back (§8.2.6.2)."""
    assert isinstance(error.request, Request)
    answer = make_response(error.request, error.status or 400)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        assert answer.get(name) == error.request.get(name) is not None


def assert_round_trips(message: Request | Response) -> None:
    again = parse_message(message.to_bytes())
    assert again.start_line() == message.start_line()
    assert again.headers == [(n, v) for n, v in message.headers if n != "Content-Length"] + [
        ("Content-Length", str(len(message.body)))
    ]
    assert again.body == message.body


# -- §3.1.1 valid messages ---------------------------------------------------------


# RFC 4475 §3.1.1.1 A Short Tortuous INVITE (wsinv)
WSINV = crlf(
    rb"""INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

"""
) + sdp_for(b"192.0.2.4", origin=b"192.0.2.3")


def test_wsinv_short_tortuous_invite() -> None:
    msg = request(WSINV)
    assert msg.method == "INVITE"
    ruri = msg.ruri
    assert isinstance(ruri, SipURI)
    assert (ruri.user, ruri.host, ruri.params) == ("vivekg", "chair-dnrc.example.com", (("unknownparam", None),))
    # Folding, LWS around ':' ';' '=' and the mix of short and long names.
    assert msg.to_addr.uri == parse_uri("sip:vivekg@chair-dnrc.example.com")
    assert msg.to_addr.display_name is None
    assert msg.to_addr.tag == "1918181833n"
    assert msg.from_addr.display_name == 'J Rosenberg \\"'  # quoted-pairs \\ and \" unescaped
    assert msg.from_addr.tag == "98asjd8"
    assert str(msg.from_addr.uri) == "sip:jdrosen@example.com"
    assert msg.max_forwards == 68  # leading zeros
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert [(v.transport, v.host, v.port, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", None, "390skdjuw"),
        ("TCP", "spindle.example.com", None, "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", None, "z9hG4bK30239"),
    ]
    assert msg.get("Subject") == ""  # the empty "s :"
    assert msg.get("NewFangledHeader") == "newfangled value continued newfangled value"
    # Unknown header: kept as text, never split into params or list items.
    assert msg.get_all("UnknownHeaderWithUnusualValue") == [";;,,;;,;"]
    route = Address.parse(msg.get("Route") or "").uri
    assert isinstance(route, SipURI)
    assert route.params == (("lr", None), ("unknownwith", "value"), ("unknown-no-value", None))
    [contact] = msg.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert str(contact.uri) == "sip:jdrosen@example.com"
    assert msg.get("Content-Type") == "application/sdp"
    assert len(msg.body) == 150 and msg.body.startswith(b"v=0\r\n")
    assert_round_trips(msg)


# RFC 4475 §3.1.1.2 Wide Range of Valid Characters (intmeth). The To display name
# holds quoted-pairs of BEL, NUL and DEL; the From parameter value and the
# extension header are non-ASCII UTF-8 (<hex> in the RFC, \x here).
INTMETH_URI_USER = b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
INTMETH = crlf(
    b"!interesting-Method0123456789_*+`.%indeed'~ sip:" + INTMETH_URI_USER
    + b":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\n"
    b"Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n"
    b'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:' + INTMETH_URI_USER + b"@example.com>\n"
    b"From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
    b'"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9";tag=_token~1\'+`*%!-.\n'
    b"Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\n"
    b"CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\n"
    b"Max-Forwards: 255\n"
    b"extensionHeader-!.%*+_`'~:\xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb\n"
    b"Content-Length: 0\n"
    b"\n"
)


def test_intmeth_wide_range_of_valid_characters() -> None:
    msg = request(INTMETH)
    # % is not an escape in a method: this is an unknown method, not INVITE.
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    ruri = msg.ruri
    assert isinstance(ruri, SipURI)
    assert ruri.user == INTMETH_URI_USER.decode()  # ';' '?' '/' are user-unreserved
    assert ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert (ruri.host, ruri.port, ruri.params, ruri.headers) == ("example.com", None, (), ())
    assert msg.via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to_addr.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.to_addr.uri.user == INTMETH_URI_USER.decode()  # type: ignore[union-attr]
    assert msg.from_addr.display_name == "token1~` token2'+_ token3*%!.-"
    assert unquoted(msg.from_addr.param("fromParam''~+*_!.-%")) == "работающий"
    assert msg.from_addr.tag == "_token~1'+`*%!-."
    # word: % is no escape, quotes and brackets need not balance.
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert (msg.cseq.seq, msg.cseq.method) == (139122385, msg.method)
    assert msg.max_forwards == 255
    assert msg.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert msg.body == b""
    assert_round_trips(msg)


# RFC 4475 §3.1.1.3 Valid Use of the % Escaping Mechanism (esc01)
ESC01 = crlf(
    rb"""INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

"""
) + sdp_for(b"192.0.2.1")


def test_esc01_valid_percent_escapes() -> None:
    msg = request(ESC01)
    ruri = msg.ruri
    assert isinstance(ruri, SipURI)
    assert ruri.user == "sips%3Auser%40example.com"  # kept as written ...
    assert ruri.unescaped_user == "sips:user@example.com"  # ... and understood
    assert ruri.host == "example.net"
    assert msg.to_addr.uri.unescaped_user == "user"  # type: ignore[union-attr]
    assert msg.to_addr.uri.equivalent(parse_uri("sip:user@example.com"))  # type: ignore[union-attr]
    assert msg.from_addr.uri.unescaped_user == "I have spaces"  # type: ignore[union-attr]
    assert msg.from_addr.tag == "938"
    assert msg.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert msg.get("Content-Type") == "application/sdp"
    [contact] = msg.contacts
    uri = contact.uri
    assert isinstance(uri, SipURI)
    assert uri.unescaped_user == "caller"
    assert uri.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    # Unescaping is not recursive: "name" is "value%41", not "valueA".
    assert unquote(uri.params[1][1] or "") == "value%41"
    assert uri.equivalent(parse_uri("sip:caller@host5.example.net;lr;name=value%2541"))
    assert not uri.equivalent(parse_uri("sip:caller@host5.example.net;lr;name=valueA"))
    assert len(msg.body) == 150
    assert_round_trips(msg)


# RFC 4475 §3.1.1.4 Escaped Nulls in URIs (escnull)
ESCNULL = crlf(
    rb"""REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0

"""
)


def test_escnull_escaped_nulls_in_uris() -> None:
    msg = request(ESCNULL)
    assert msg.method == "REGISTER"
    # The AOR is not cut short at the NUL.
    assert msg.to_addr.uri.unescaped_user == "null-\x00-null"  # type: ignore[union-attr]
    assert msg.from_addr.uri.unescaped_user == "null-\x00-null"  # type: ignore[union-attr]
    assert msg.from_addr.tag == "839923423"
    first, second = msg.contacts
    assert first.uri.unescaped_user == "\x00"  # type: ignore[union-attr]
    assert second.uri.unescaped_user == "\x00\x00"  # type: ignore[union-attr]
    assert not first.uri.equivalent(second.uri)  # two distinct bindings  # type: ignore[union-attr]
    assert msg.body == b""
    assert_round_trips(msg)


# RFC 4475 §3.1.1.5 Use of % When It Is Not an Escape (esc02)
ESC02 = crlf(
    rb"""RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

"""
)


def test_esc02_percent_that_is_not_an_escape() -> None:
    msg = request(ESC02)
    assert msg.method == "RE%47IST%45R"  # not REGISTER
    assert msg.to_addr.display_name == msg.from_addr.display_name == "%Z%45"
    assert msg.via.branch == "z9hG4bK209%fzsnel234"
    # Two Contact values, not three: C%6Fntact is another header.
    assert [str(c.uri) for c in msg.contacts] == ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"]
    assert msg.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert_round_trips(msg)


# RFC 4475 §3.1.1.6 No LWS between Display Name and < (lwsdisp)
LWSDISP = crlf(
    rb"""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

"""
)


def test_lwsdisp_no_lws_between_display_name_and_angle() -> None:
    msg = request(LWSDISP)
    assert msg.from_addr.display_name == "caller"
    assert str(msg.from_addr.uri) == "sip:caller@example.com"
    assert msg.from_addr.tag == "323"
    assert_round_trips(msg)


# RFC 4475 §3.1.1.7 Long Values in Header Fields (longreq). The RFC writes the
# long parts as <repeat count=N>...</repeat>.
LONG_CALLER = b"amazinglylongcallername" * 5
LONG_TAG = b"12" + b"982" * 50 + b"424"
LONG_BRANCH = b"very" + b"long" * 50 + b"branchvalue"
LONGREQ = (
    crlf(
        b"INVITE sip:user@example.com SIP/2.0\n"
        b'To: "I have a user name of ' + b"extreme" * 10 + b' proportion"<sip:user@example.com:6000;unknownparam1=very'
        + b"long" * 20 + b"value;longparam" + b"name" * 25 + b"=shortvalue;very" + b"long" * 25
        + b"ParameterNameWithNoValue>\n"
        b"F: sip:" + LONG_CALLER + b"@example.net;tag=" + LONG_TAG + b";unknownheaderparam" + b"name" * 20
        + b"=unknowheaderparam" + b"value" * 15 + b";unknownValueless" + b"paramname" * 10 + b"\n"
        b"Call-ID: longreq.one" + b"really" * 20 + b"longcallid\n"
        b"CSeq: 3882340 INVITE\n"
        b"Unknown-" + b"Long" * 20 + b"-Name: unknown-" + b"long" * 20 + b"-value; unknown-" + b"long" * 20
        + b"-parameter-name = unknown-" + b"long" * 20 + b"-parameter-value\n"
        + rb"""Via: SIP/2.0/TCP sip33.example.com
v: SIP/2.0/TCP sip32.example.com
V: SIP/2.0/TCP sip31.example.com
Via: SIP/2.0/TCP sip30.example.com
ViA: SIP/2.0/TCP sip29.example.com
VIa: SIP/2.0/TCP sip28.example.com
VIA: SIP/2.0/TCP sip27.example.com
via: SIP/2.0/TCP sip26.example.com
viA: SIP/2.0/TCP sip25.example.com
vIa: SIP/2.0/TCP sip24.example.com
vIA: SIP/2.0/TCP sip23.example.com
V :  SIP/2.0/TCP sip22.example.com
v :  SIP/2.0/TCP sip21.example.com
V  : SIP/2.0/TCP sip20.example.com
v  : SIP/2.0/TCP sip19.example.com
Via : SIP/2.0/TCP sip18.example.com
Via  : SIP/2.0/TCP sip17.example.com
Via: SIP/2.0/TCP sip16.example.com
Via: SIP/2.0/TCP sip15.example.com
Via: SIP/2.0/TCP sip14.example.com
Via: SIP/2.0/TCP sip13.example.com
Via: SIP/2.0/TCP sip12.example.com
Via: SIP/2.0/TCP sip11.example.com
Via: SIP/2.0/TCP sip10.example.com
Via: SIP/2.0/TCP sip9.example.com
Via: SIP/2.0/TCP sip8.example.com
Via: SIP/2.0/TCP sip7.example.com
Via: SIP/2.0/TCP sip6.example.com
Via: SIP/2.0/TCP sip5.example.com
Via: SIP/2.0/TCP sip4.example.com
Via: SIP/2.0/TCP sip3.example.com
Via: SIP/2.0/TCP sip2.example.com
Via: SIP/2.0/TCP sip1.example.com
"""
        b"Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=" + LONG_BRANCH + b"\n"
        b"Max-Forwards: 70\n"
        b"Contact: <sip:" + LONG_CALLER + b"@host5.example.net>\n"
        b"Content-Type: application/sdp\n"
        b"l: 150\n"
        b"\n"
    )
    + sdp_for(b"192.0.2.1")
)


def test_longreq_long_values() -> None:
    msg = request(LONGREQ)
    to = msg.to_addr
    assert to.display_name == "I have a user name of " + "extreme" * 10 + " proportion"
    assert isinstance(to.uri, SipURI) and to.uri.port == 6000
    assert to.uri.params == (
        ("unknownparam1", "very" + "long" * 20 + "value"),
        ("longparam" + "name" * 25, "shortvalue"),
        ("very" + "long" * 25 + "ParameterNameWithNoValue", None),
    )
    assert msg.from_addr.uri.user == LONG_CALLER.decode()  # type: ignore[union-attr]
    assert msg.from_addr.params == (
        ("tag", LONG_TAG.decode()),
        ("unknownheaderparam" + "name" * 20, "unknowheaderparam" + "value" * 15),
        ("unknownValueless" + "paramname" * 10, None),
    )
    assert msg.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert msg.get("Unknown-" + "Long" * 20 + "-Name") == (
        "unknown-" + "long" * 20 + "-value; unknown-" + "long" * 20
        + "-parameter-name = unknown-" + "long" * 20 + "-parameter-value"
    )
    vias = msg.vias
    assert [v.host for v in vias] == [f"sip{n}.example.com" for n in range(33, 0, -1)] + ["host.example.com"]
    assert all(v.transport == "TCP" and v.branch is None for v in vias[:-1])
    assert (vias[-1].received, vias[-1].branch) == ("192.0.2.5", LONG_BRANCH.decode())
    assert msg.contacts[0].uri.user == LONG_CALLER.decode()  # type: ignore[union-attr]
    assert len(msg.body) == 150
    assert_round_trips(msg)


# RFC 4475 §3.1.1.8 Extra Trailing Octets in a UDP Datagram (dblreq)
DBLREQ_REGISTER = crlf(
    rb"""REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0

"""
)
DBLREQ = DBLREQ_REGISTER + crlf(
    rb"""INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

"""
) + sdp_for(b"192.0.2.15").replace(b"m=video", b"m =video")


def test_dblreq_extra_trailing_octets_are_ignored() -> None:
    msg = request(DBLREQ)
    assert msg.method == "REGISTER"
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert str(msg.contacts[0].uri) == "sip:j.user@host.example.com"
    assert msg.body == b""  # the INVITE-looking octets are noise (§18.3)
    assert b"INVITE" not in msg.to_bytes()
    assert msg.to_bytes() == parse_message(DBLREQ_REGISTER).to_bytes()


# RFC 4475 §3.1.1.9 Semicolon-Separated Parameters in URI User Part (semiuri)
SEMIURI = crlf(
    rb"""OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

"""
)


def test_semiuri_semicolon_in_user_part() -> None:
    msg = request(SEMIURI)
    ruri = msg.ruri
    assert isinstance(ruri, SipURI)
    assert ruri.user == "user;par=u%40example.net"
    assert ruri.unescaped_user == "user;par=u@example.net"
    assert (ruri.host, ruri.params) == ("example.com", ())
    assert msg.get_all("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]
    assert_round_trips(msg)


# RFC 4475 §3.1.1.10 Varied and Unknown Transport Types (transports)
TRANSPORTS = crlf(
    rb"""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

"""
)


def test_transports_varied_and_unknown_via_transports() -> None:
    msg = request(TRANSPORTS)
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "t1.example.com", "z9hG4bKkdjuw"),
        ("SCTP", "t2.example.com", "z9hG4bKklasjdhf"),
        ("TLS", "t3.example.com", "z9hG4bK2980unddj"),
        ("UNKNOWN", "t4.example.com", "z9hG4bKasd0f3en"),
        ("TCP", "t5.example.com", "z9hG4bK0a9idfnee"),
    ]
    assert msg.call_id == "transports.kijh4akdnaqjkwendsasfdj"
    assert_round_trips(msg)


# RFC 4475 §3.1.1.11 Multipart MIME Message (mpart01). The second body part is
# binary (a DER-encoded S/MIME signature, <hex> in the RFC) with NUL, CR and LF
# octets in it; only Content-Length can frame it.
MPART01_SIGNATURE = bytes.fromhex(
    "3082015206092A864886F70D010702A08201433082013F02"
    "01013109300706052B0E03021A300B06092A864886F70D01"
    "0701318201203082011C020101307C3070310B3009060355"
    "040613025553311330110603550408130A43616C69666F72"
    "6E69613111300F0603550407130853616E204A6F7365310E"
    "300C060355040A1305736970697431293027060355040B13"
    "205369706974205465737420436572746966696361746520"
    "417574686F7269747902080195007102330113300706052B"
    "0E03021A300D06092A864886F70D01010105000481808EF4"
    "66F948F0522DD2E5978E9D95AAE9F2FE15A06659716292E8"
    "DA2AA8D8350A68CEFFAE3CBD2BFF1675DDD5648E593DD647"
    "28F26220F7E941749E330D9A15EDABDB93D10C42102E7B72"
    "89D29CC0C9AE2EFBC7C0CFF9172F3B027E4FC027E1546DE4"
    "B6AA3ABB3E66CCCB5DD6C64B8383149CB8E6FF182D944FE5"
    "7B65BC99D005"
)
MPART01_BODY = (
    crlf(
        b"""--7a9cbec02ceef655
Content-Type: text/plain
Content-Transfer-Encoding: binary

Hello
--7a9cbec02ceef655
Content-Type: application/octet-stream
Content-Transfer-Encoding: binary

"""
    )
    + MPART01_SIGNATURE
    + b"\r\n--7a9cbec02ceef655--\r\n"
)
MPART01 = (
    crlf(
        rb"""MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: 553

"""
    )
    + MPART01_BODY
)


def test_mpart01_multipart_body_with_binary_part() -> None:
    assert len(MPART01_SIGNATURE) == 4 + 0x152  # the DER length says so
    msg = request(MPART01)
    assert msg.method == "MESSAGE"
    assert len(msg.body) == 553 and msg.body == MPART01_BODY
    assert b"\x00" in msg.body
    assert msg.get("Content-Type") == "multipart/mixed;boundary=7a9cbec02ceef655"
    via = msg.via
    assert (via.host, via.port, via.branch) == ("127.0.0.1", 5070, "z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-")
    assert via.has_param("rport") and via.rport is None  # rport asked for, not filled in
    assert msg.get("Identity", "").endswith("UhkMWYUA=")
    assert str(Address.parse(msg.get("Route") or "").uri) == "sip:127.0.0.1:5080"
    assert msg.get("Date") == "Sat, 15 Oct 2005 04:44:56 GMT"
    assert_round_trips(msg)


# RFC 4475 §3.1.1.12 Unusual Reason Phrase (unreason): unreserved and
# non-ASCII UTF-8 characters (<hex> in the RFC).
UNREASON = crlf(
    b"SIP/2.0 200 = 2**3 * 5**2 \xd0\xbd\xd0\xbe \xd1\x81\xd1\x82\xd0\xbe "
    b"\xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd0\xbd\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe "
    b"\xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd1\x82\xd1\x8c - "
    b"\xd0\xbf\xd1\x80\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe\xd0\xb5\n"
    + rb"""Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

"""
) + sdp_for(b"192.0.2.198")


def test_unreason_unusual_reason_phrase() -> None:
    msg = response(UNREASON)
    assert msg.status == 200
    assert msg.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert (msg.from_addr.tag, msg.to_addr.tag) == ("11141343", "2229")
    assert (msg.cseq.seq, msg.cseq.method) == (35, "INVITE")
    assert len(msg.body) == 154
    assert_round_trips(msg)


# RFC 4475 §3.1.1.13 Empty Reason Phrase (noreason); the SP after the code stays.
NOREASON_START = b"SIP/2.0 100 \n"
NOREASON = crlf(
    NOREASON_START
    + rb"""Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"""
)


def test_noreason_empty_reason_phrase() -> None:
    msg = response(NOREASON)
    assert (msg.status, msg.reason) == (100, "")
    assert msg.to_bytes().startswith(b"SIP/2.0 100 \r\n")
    assert msg.via.branch == "z9hG4bK2398ndaoe"
    assert_round_trips(msg)


# -- §3.1.2 invalid messages -------------------------------------------------------


# RFC 4475 §3.1.2.1 Extraneous Header Field Separators (badinv01)
BADINV01 = crlf(
    rb"""INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: 152
Content-Type: application/sdp

"""
) + sdp_for(b"192.0.2.15")


def test_badinv01_extraneous_separators() -> None:
    assert_answerable(refused(BADINV01, 400, "empty element"))


# RFC 4475 §3.1.2.2 Content Length Larger Than Message (clerr). Over UDP: 400.
CLERR = crlf(
    rb"""INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

"""
) + sdp_for(b"192.0.2.155")


def test_clerr_content_length_larger_than_message() -> None:
    assert_answerable(refused(CLERR, 400, "Content-Length 9999 exceeds"))


# RFC 4475 §3.1.2.3 Negative Content-Length (ncl)
NCL = crlf(
    rb"""INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999

"""
) + sdp_for(b"192.0.2.53")


def test_ncl_negative_content_length() -> None:
    assert_answerable(refused(NCL, 400, "bad Content-Length '-999'"))
    # "The same behavior is appropriate for ... Content-Length: five".
    refused(NCL.replace(b"-999", b"five"), 400, "bad Content-Length 'five'")


# RFC 4475 §3.1.2.4 Request Scalar Fields with Overlarge Values (scalar02)
SCALAR02 = crlf(
    b"""REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 1"""
    + b"0" * 100
    + b"""
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

"""
)


def test_scalar02_overlarge_request_scalars() -> None:
    # The CSeq is what makes it a 400; Max-Forwards and Expires alone could be
    # handled (absent / clamped), as the RFC allows.
    assert_answerable(refused(SCALAR02, 400, "bad CSeq"))
    fixed = request(SCALAR02.replace(b"36893488147419103232", b"1").replace(b"Max-Forwards: 300\r\n", b""))
    assert fixed.expires == 2**32 - 1  # §20.19: larger values are taken as 2**32-1
    assert fixed.contacts[0].param("expires") == "280297596632815"


# RFC 4475 §3.1.2.5 Response Scalar Fields with Overlarge Values (scalarlg):
# a response like this is simply discarded.
SCALARLG = crlf(
    rb"""SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

"""
)


def test_scalarlg_overlarge_response_scalars_dropped() -> None:
    refused(SCALARLG, None, "bad CSeq")


# RFC 4475 §3.1.2.6 Unterminated Quoted String in Display Name (quotbal)
QUOTBAL = crlf(
    rb"""INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: 152

"""
) + sdp_for(b"192.0.2.15")


def test_quotbal_unterminated_quoted_display_name() -> None:
    assert_answerable(refused(QUOTBAL, 400, "unterminated quoted string"))


# RFC 4475 §3.1.2.7 <> Enclosing Request-URI (ltgtruri)
LTGTRURI = crlf(
    rb"""INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 159

"""
) + sdp_for(b"192.0.2.5", time=b"3149328700 0")


def test_ltgtruri_request_uri_in_angle_brackets() -> None:
    assert_answerable(refused(LTGTRURI, 400, "bad URI '<sip:user@example.com>'"))


# RFC 4475 §3.1.2.8 Malformed SIP Request-URI (embedded LWS) (lwsruri)
LWSRURI = crlf(
    rb"""INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 159

"""
) + sdp_for(b"192.0.2.1", time=b"3149328700 0")


def test_lwsruri_lws_inside_request_uri() -> None:
    assert_answerable(refused(LWSRURI, 400, "malformed Request-Line"))


# RFC 4475 §3.1.2.9 Multiple SP Separating Request-Line Elements (lwsstart).
# Rejecting is acceptable; pbxd does not guess what the sender meant.
LWSSTART = crlf(
    rb"""INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 150

"""
) + sdp_for(b"192.0.2.1")


def test_lwsstart_multiple_sp_in_request_line() -> None:
    assert_answerable(refused(LWSSTART, 400, "malformed Request-Line"))


# RFC 4475 §3.1.2.10 SP Characters at End of Request-Line (trws). The two
# trailing SP are written out; rejecting is acceptable.
TRWS = crlf(
    b"OPTIONS sip:remote-target@example.com SIP/2.0  \n"
    + rb"""Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
Accept: application/sdp
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0

"""
)


def test_trws_trailing_sp_after_version() -> None:
    assert_answerable(refused(TRWS, 400, "malformed Request-Line"))


# RFC 4475 §3.1.2.11 Escaped Headers in SIP Request-URI (escruri)
ESCRURI = crlf(
    rb"""INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: 150

"""
) + sdp_for(b"192.0.2.1")


def test_escruri_headers_in_request_uri() -> None:
    assert_answerable(refused(ESCRURI, 400, "Request-URI must not carry headers"))


# RFC 4475 §3.1.2.12 Invalid Time Zone in Date Header Field (baddate)
BADDATE = crlf(
    rb"""INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 150

"""
) + sdp_for(b"192.0.2.5")


def test_baddate_accepted_because_date_is_not_used() -> None:
    # Judgement call the RFC allows: rejecting is only advised when the Date
    # matters to processing. Nothing in pbxd interprets Date, so the request is
    # accepted and the value kept verbatim (forwarded unchanged if at all).
    msg = request(BADDATE)
    assert msg.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert msg.method == "INVITE" and len(msg.body) == 150


# RFC 4475 §3.1.2.13 Failure to Enclose name-addr URI in <> (regbadct)
REGBADCT = crlf(
    rb"""REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0

"""
)


def test_regbadct_uri_with_header_not_in_angle_brackets() -> None:
    assert_answerable(refused(REGBADCT, 400, "must be in <>"))


# RFC 4475 §3.1.2.14 Spaces within addr-spec (badaspec)
BADASPEC = crlf(
    rb"""OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0

"""
)


def test_badaspec_spaces_within_addr_spec() -> None:
    assert_answerable(refused(BADASPEC, 400, "whitespace inside URI"))


# RFC 4475 §3.1.2.15 Non-token Characters in Display Name (baddn)
BADDN = crlf(
    rb"""OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0

"""
)


def test_baddn_unquoted_non_token_display_name() -> None:
    assert_answerable(refused(BADDN, 400, "display name must be tokens or quoted"))


# RFC 4475 §3.1.2.16 Unknown Protocol Version (badvers): 505.
BADVERS = crlf(
    rb"""OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

"""
)


def test_badvers_unknown_protocol_version() -> None:
    error = refused(BADVERS, 505, "unsupported version 'SIP/7.0'")
    assert_answerable(error)
    assert isinstance(error.request, Request)
    assert make_response(error.request, 505).start_line() == "SIP/2.0 505 Version Not Supported"


# RFC 4475 §3.1.2.17 Start Line and CSeq Method Mismatch (mismatch01)
MISMATCH01 = crlf(
    rb"""OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

"""
)


def test_mismatch01_cseq_method_mismatch() -> None:
    assert_answerable(refused(MISMATCH01, 400, "CSeq method INVITE does not match OPTIONS"))


# RFC 4475 §3.1.2.18 Unknown Method with CSeq Method Mismatch (mismatch02)
MISMATCH02 = crlf(
    rb"""NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: 138

"""
) + sdp(
    b"v=0", b"o=mhandley 29739 7272939 IN IP4 192.0.2.1", b"c=IN IP4 192.0.2.1", *SDP_TAIL
)


def test_mismatch02_unknown_method_with_cseq_mismatch() -> None:
    # The RFC prefers 501 to 400 here, for its better future-proof behaviour.
    assert_answerable(refused(MISMATCH02, 501, "CSeq method INVITE does not match NEWMETHOD"))


# RFC 4475 §3.1.2.19 Overlarge Response Code (bigcode): dropped.
BIGCODE = crlf(
    rb"""SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"""
)


def test_bigcode_overlarge_response_code_dropped() -> None:
    error = refused(BIGCODE, None, "bad status code '4294967301'")
    assert error.request is None


# -- §3.2-§3.4: the parser's part of the transaction and application tests --------


# RFC 4475 §3.2.1 Missing Transaction Identifier (badbranch): must not break
# the parser; what to do about it is the transaction layer's decision.
BADBRANCH = crlf(
    rb"""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
Accept: application/sdp
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
CSeq: 8 OPTIONS
l: 0

"""
)


def test_badbranch_bare_magic_cookie_parses() -> None:
    assert request(BADBRANCH).via.branch == "z9hG4bK"


# RFC 4475 §3.3.1 Missing Required Header Fields (insuf): 400.
INSUF = crlf(
    rb"""INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

"""
) + sdp_for(b"192.0.2.95")


def test_insuf_missing_required_headers() -> None:
    refused(INSUF, 400, "missing From header")


# RFC 4475 §3.3.2 Request-URI with Unknown Scheme (unkscm) and §3.3.3 with
# Known but Atypical Scheme (novelsc): well formed; the 416 is the TU's call.
UNKSCM = crlf(
    rb"""OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"""
)
NOVELSC = crlf(
    rb"""OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"""
)


def test_unkscm_and_novelsc_other_request_uri_schemes() -> None:
    assert str(request(UNKSCM).ruri) == "nobodyknowsthisscheme:totallyopaquecontent"
    ruri = request(NOVELSC).ruri
    assert (ruri.scheme, str(ruri)) == ("soap.beep", "soap.beep://192.0.2.103:3002")


# RFC 4475 §3.3.4 Unknown URI Schemes in Header Fields (unksm2)
UNKSM2 = crlf(
    rb"""REGISTER sip:example.com SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 REGISTER
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw
Contact: <name:John_Smith>
l: 0

"""
)


def test_unksm2_unknown_schemes_in_header_fields() -> None:
    msg = request(UNKSM2)
    assert str(msg.to_addr.uri) == "isbn:2983792873" and msg.from_addr.tag == "3234233"
    assert [str(c.uri) for c in msg.contacts] == ["name:John_Smith"]


# RFC 4475 §3.3.8 Multiple Values in Single Value Required Fields (multi01): 400.
MULTI01 = crlf(
    rb"""INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: 154
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5

"""
) + sdp_for(b"192.0.2.25") + b"\r\n"  # this body ends in an empty line (l: 154)


def test_multi01_repeated_single_value_headers() -> None:
    assert_answerable(refused(MULTI01, 400, "more than one"))


# RFC 4475 §3.3.9 Multiple Content-Length Values (mcl01): 400.
MCL01 = crlf(
    rb"""OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.
"""
)


def test_mcl01_multiple_content_lengths() -> None:
    refused(MCL01, 400, "more than one Content-Length header")


# RFC 4475 §3.3.11 Max-Forwards of Zero (zeromf): well formed (the 483 is the TU's).
ZEROMF = crlf(
    rb"""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=3ghsd41
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i
Max-Forwards: 0
Content-Length: 0

"""
)


def test_zeromf_max_forwards_zero() -> None:
    assert request(ZEROMF).max_forwards == 0


# RFC 4475 §3.3.12 REGISTER with a Contact Header Parameter (cparam01) and
# §3.3.13 with a url-parameter (cparam02): who owns ";unknownparam" differs.
CPARAM01 = crlf(
    rb"""REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam
l: 0

"""
)
CPARAM02 = crlf(
    rb"""REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=838293
To: sip:watson@example.com
Call-ID: cparam02.70710@saturn.example.com
CSeq: 3 REGISTER
Contact: <sip:+19725552222@gw1.example.net;unknownparam>
l: 0

"""
)


def test_cparam01_cparam02_parameter_ownership() -> None:
    [header_param] = request(CPARAM01).contacts
    assert header_param.params == (("unknownparam", None),)
    assert header_param.uri.params == ()  # type: ignore[union-attr]
    [uri_param] = request(CPARAM02).contacts
    assert uri_param.params == ()
    assert uri_param.uri.params == (("unknownparam", None),)  # type: ignore[union-attr]


# RFC 4475 §3.3.14 REGISTER with a URL Escaped Header (regescrt): valid in <>.
REGESCRT = crlf(
    rb"""REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>
L:0

"""
)


def test_regescrt_escaped_header_in_contact_uri() -> None:
    [contact] = request(REGESCRT).contacts
    assert contact.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)  # type: ignore[union-attr]


# RFC 4475 §3.4.1 INVITE with RFC 2543 Syntax (inv2543): no branch, no
# Max-Forwards, no Content-Length (over UDP the body runs to the datagram's end).
INV2543 = crlf(
    rb"""INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0
"""
)


def test_inv2543_rfc2543_style_invite() -> None:
    msg = request(INV2543)
    assert msg.via.branch is None and msg.max_forwards is None
    assert msg.from_addr.tag is None
    assert msg.to_addr.params == (("user", "phone"),)  # addr-spec: the header's param
    assert msg.body.endswith(b"m=audio 49217 RTP/AVP 0\r\n") and len(msg.body) == 105
