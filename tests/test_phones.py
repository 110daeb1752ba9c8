"""pbxd.registrar.phones: vendor, model, firmware and MAC from a REGISTER."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbxd.registrar.phones import MAC_SOURCES, PhoneFacts, phone_facts
from pbxd.sip.message import parse_message
from pbxd.store.models import normalize_mac

# User-Agent -> (vendor, model, firmware, MAC). The strings are the formats
# these phones and softphones send (MACs and build numbers changed).
USER_AGENTS = [
    (
        "Yealink SIP-T46S 66.86.0.15 00:15:65:aa:bb:cc",
        "Yealink", "SIP-T46S", "66.86.0.15", "001565aabbcc",
    ),
    ("Yealink SIP-T46S 66.85.0.5", "Yealink", "SIP-T46S", "66.85.0.5", None),
    ("Yealink SIP-T54W 96.86.0.70", "Yealink", "SIP-T54W", "96.86.0.70", None),
    (
        "Yealink SIP-T53W 96.87.0.16 805ec0123456",
        "Yealink", "SIP-T53W", "96.87.0.16", "805ec0123456",
    ),
    (
        "Yealink SIP-T28P 2.72.14.2 00:15:65:18:72:EB",
        "Yealink", "SIP-T28P", "2.72.14.2", "0015651872eb",
    ),
    ("Yealink SIP-T21P_E2 52.83.0.35", "Yealink", "SIP-T21P_E2", "52.83.0.35", None),
    ("Yealink W60B 77.83.0.85", "Yealink", "W60B", "77.83.0.85", None),
    ("Yealink SIP-T26P", "Yealink", "SIP-T26P", None, None),
    ("PolycomVVX-VVX_410-UA/5.9.5.0614", "Polycom", "VVX 410", "5.9.5.0614", None),
    ("PolycomVVX-VVX_450-UA/5.9.0.9373", "Polycom", "VVX 450", "5.9.0.9373", None),
    ("PolycomVVX-VVX450-UA/6.4.5.1000", "Polycom", "VVX 450", "6.4.5.1000", None),
    (
        "PolycomVVX-VVX_150-UA/6.4.1.2280_482567164887",
        "Polycom", "VVX 150", "6.4.1.2280", "482567164887",
    ),
    ("PolycomSoundPointIP-SPIP_331-UA/4.0.x", "Polycom", "SPIP 331", "4.0.x", None),
    ("PolycomSoundStationIP-SSIP_5000-UA/4.0.9.1400", "Polycom", "SSIP 5000", "4.0.9.1400", None),
    ("PolyEdge-Edge_E350-UA/8.0.0.1234", "Polycom", "Edge E350", "8.0.0.1234", None),
    (
        "Polycom/5.5.0.20556 PolycomVVX-VVX_500-UA/5.5.0.20556",
        "Polycom", "VVX 500", "5.5.0.20556", None,
    ),
    (
        "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application",
        "Polycom", "VVX 500", "5.9.7.4477", None,
    ),
    ("Polycom VVX 450", "Polycom", "VVX 450", None, None),
    ("Grandstream GXP2170 1.0.11.3", "Grandstream", "GXP2170", "1.0.11.3", None),
    ("Grandstream GXP2130 1.0.7.25", "Grandstream", "GXP2130", "1.0.7.25", None),
    ("Grandstream HT812 1.0.29.8", "Grandstream", "HT812", "1.0.29.8", None),
    (
        "Grandstream Model HW GXP2200 V2.2A SW 1.0.1.33 DevId 000b82462d97",
        "Grandstream", "GXP2200", "1.0.1.33", "000b82462d97",
    ),
    ("Cisco-CP8841/11.0", "Cisco", "CP-8841", "11.0", None),
    ("Cisco-CP7960G/8.0", "Cisco", "CP-7960G", "8.0", None),
    ("Cisco-CP8865NR/14.2.1", "Cisco", "CP-8865NR", "14.2.1", None),
    ("Cisco-CP-8841-3PCC/11.0 (00562b043615)", "Cisco", "CP-8841-3PCC", "11.0", "00562b043615"),
    ("Cisco/SPA504G-7.6.2", "Cisco", "SPA504G", "7.6.2", None),
    ("Cisco/SPA504G-7.6.2c", "Cisco", "SPA504G", "7.6.2c", None),
    ("Cisco/SPA122-1.4.1(SR5)", "Cisco", "SPA122", "1.4.1(SR5)", None),
    ("Cisco-ATA191-MPP/11-1-0MSR3-9", "Cisco", "ATA191-MPP", "11-1-0MSR3-9", None),
    ("snom720/10.1.33.33", "Snom", "720", "10.1.33.33", None),
    ("snomD785/10.1.84.12", "Snom", "D785", "10.1.84.12", None),
    ("snomD785-SIP 10.1.169.16", "Snom", "D785", "10.1.169.16", None),
    ("snom821/873_19_20130321", "Snom", "821", "873_19_20130321", None),
    ("snom105-3.56p", "Snom", "105", "3.56p", None),
    ("snom-m3-SIP/02.11.00", "Snom", "m3", "02.11.00", None),
    ("Fanvil X6U 2.4.x", "Fanvil", "X6U", "2.4.x", None),
    ("Fanvil X303 2.12.18.9 0c383e63963b", "Fanvil", "X303", "2.12.18.9", "0c383e63963b"),
    ("Fanvil i16SV 2.4.0", "Fanvil", "i16SV", "2.4.0", None),
    (
        "Avaya one-X Deskphone 7.1.15.1.3 b4475ea2e9a0",
        "Avaya", "one-X Deskphone", "7.1.15.1.3", "b4475ea2e9a0",
    ),
    (
        "Avaya H175 Collaboration Station H1xx_SIP-R1_0_2_3_3050.tar",
        "Avaya", "H175", "H1xx_SIP-R1_0_2_3_3050", None,
    ),
    ("Avaya SIP Softphone", "Avaya", "SIP Softphone", None, None),
    ("Panasonic_KX-UT113/01.133 (0080f0c8c381)", "Panasonic", "KX-UT113", "01.133", "0080f0c8c381"),
    ("Panasonic_KX-HDV130/01.102", "Panasonic", "KX-HDV130", "01.102", None),
    ("Linphone/3.6.1 (eXosip2/4.1.0)", "Linphone", None, "3.6.1", None),
    (
        "LinphoneiOS/4.5.1 (iPhone) LinphoneSDK/5.0.40-pre.2+ea19d3d",
        "Linphone", "iOS", "4.5.1", None,
    ),
    ("LinphoneAndroid/4.6.14 (Pixel 6) LinphoneSDK/5.1.59", "Linphone", "Android", "4.6.14", None),
    (
        "Linphone Desktop/4.4.10 (Ubuntu 22.04, Qt 5.15.2) LinphoneCore/5.1.64",
        "Linphone", "Desktop", "4.4.10", None,
    ),
    (
        "Linphone Desktop/ (Ubuntu 22.04.3 LTS, Qt 5.15.3) LinphoneCore/4.4.21",
        "Linphone", "Desktop", None, None,
    ),
    ("Zoiper rev.5415", "Zoiper", None, "rev.5415", None),
    ("Zoiper v2.10.20.4_1", "Zoiper", None, "2.10.20.4_1", None),
    ("Zoiper for Windows 2.38 rev.16635", "Zoiper", "Windows", "2.38", None),
    ("Z 5.6.6 v2.10.20.5", "Zoiper", None, "5.6.6", None),
    ("Z 5.2.19 rv2.8.99", "Zoiper", None, "5.2.19", None),
    ("MicroSIP/3.21.3", "MicroSIP", None, "3.21.3", None),
    ("Bria 5 release 5.9.1 stamp 106645", "Bria", "5", "5.9.1", None),
    ("Bria iOS release 3.9.5 stamp 38501.38502", "Bria", "iOS", "3.9.5", None),
    ("Bria iOS 3.1.1", "Bria", "iOS", "3.1.1", None),
    ("X-Lite release 5.8.3 stamp 102651", "X-Lite", None, "5.8.3", None),
    ("Telephone 1.6", "Telephone", None, "1.6", None),
    ("OBIHAI/OBi1062-5.0.0.1542", "Obihai", "OBi1062", "5.0.0.1542", None),
    ("Htek UC912G 001fc1200b41", "Htek", "UC912G", None, "001fc1200b41"),
    ("Htek UC924E V3.0.4.5", "Htek", "UC924E", "3.0.4.5", None),
    ("Htek UC903 2.0.4.2 00:1f:c1:1c:22:a9", "Htek", "UC903", "2.0.4.2", "001fc11c22a9"),
    (
        "Htek UC V20 V5.22.10.25.245 f26dcc142f0d",
        "Htek", "UC V20", "5.22.10.25.245", "f26dcc142f0d",
    ),
    (
        "ALE M3-CE 2.11.01.1604 3c28a620089e",
        "Alcatel-Lucent", "M3-CE", "2.11.01.1604", "3c28a620089e",
    ),
    ("Alcatel-Lucent 8460 ACS 12.0.2b0290", "Alcatel-Lucent", "8460 ACS", "12.0.2b0290", None),
    (
        "Gigaset N870 IP PRO/83.V2.12.0+build.e6c1b5b;7C2F80123456",
        "Gigaset", "N870 IP PRO", "83.V2.12.0+build.e6c1b5b", "7c2f80123456",
    ),
    (
        "Aastra57i MAC:00-08-5D-19-94-B7 V:2.3.1.26-SIP",
        "Aastra", "57i", "2.3.1.26-SIP", "00085d1994b7",
    ),
    ("Aastra 6731i/3.2.2.3077", "Aastra", "6731i", "3.2.2.3077", None),
    ("Mitel 6930/6.4.0.132", "Mitel", "6930", "6.4.0.132", None),
    ("Zultys ZIP37G 47.85.0.140", "Zultys", "ZIP37G", "47.85.0.140", None),
    # Unknown products: nothing guessed, not even from a MAC-looking word.
    ("Generic SIP Phone", None, None, None, None),
    ("Asterisk PBX 18.20.0", None, None, None, None),
    ("friendly-scanner", None, None, None, None),
    ("SomePhone/1.0 001565aabbcc", None, None, None, None),
    # ... but an unambiguous MAC is read in any User-Agent.
    ("SomePhone/1.0 MAC=00:15:65:aa:bb:cc", None, None, None, "001565aabbcc"),
    ("SomePhone/1.0 (00-15-65-AA-BB-CC)", None, None, None, "001565aabbcc"),
]


@pytest.mark.parametrize(("user_agent", "vendor", "model", "firmware", "mac"), USER_AGENTS)
def test_user_agent(user_agent, vendor, model, firmware, mac):
    facts = phone_facts(user_agent)
    assert (facts.vendor, facts.model, facts.firmware, facts.mac) == (vendor, model, firmware, mac)
    assert facts.mac_source == ("user_agent" if mac else None)


@pytest.mark.parametrize(
    "user_agent",
    [
        "Yealink SIP-T46S 66.86.0.15 ff:ff:ff:ff:ff:ff",  # broadcast
        "Yealink SIP-T46S 66.86.0.15 01:00:5e:00:00:fb",  # multicast
        "Yealink SIP-T46S 66.86.0.15 000000000000",
        "Yealink SIP-T46S 66.86.0.15 00:15:65-aa-bb-cc",  # two kinds of separator
        "Yealink SIP-T46S 66.86.0.15 001565aabbc",  # 11 digits
        "Panasonic_KX-UT670/01.022 (0080f000000)",
        "SomePhone/1.0 MAC=33:33:00:00:00:01",
        "SomePhone/1.0 00:15:65:aa:bb:cc:dd:ee",  # EUI-64
    ],
)
def test_user_agent_without_usable_mac(user_agent):
    assert phone_facts(user_agent).mac is None


def test_user_agent_text_around_it_is_trimmed():
    facts = phone_facts("  Yealink SIP-T46S 66.86.0.15\t")
    assert facts == PhoneFacts("Yealink", "SIP-T46S", "66.86.0.15")


# -- +sip.instance -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance", "mac"),
    [
        ('"<urn:uuid:00000000-0000-1000-8000-000B826C4283>"', "000b826c4283"),  # Grandstream
        ("<urn:uuid:00000000-0000-1000-8000-0004f2aabbcc>", "0004f2aabbcc"),
        ("urn:uuid:00000000-0000-1000-8000-001565AABBCC", "001565aabbcc"),
        ("00000000-0000-1000-8000-000A95A0E128", "000a95a0e128"),  # RFC 5626 example
        ("<urn:uuid:00000000-0000-0000-0000-001200a65ed2>", "001200a65ed2"),  # Cisco
        ("<URN:UUID:00000000-0000-0000-0000-9CADEF700065>", "9cadef700065"),
        (' "<urn:uuid:00000000-0000-1000-8000-00085D13F069>" ', "00085d13f069"),
    ],
)
def test_instance_with_mac(instance, mac):
    facts = phone_facts(None, instance)
    assert (facts.mac, facts.mac_source) == (mac, "sip_instance")
    assert (facts.vendor, facts.model, facts.firmware) == (None, None, None)


@pytest.mark.parametrize(
    "instance",
    [
        "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>",  # a real time-based v1 UUID
        "<urn:uuid:9374a213-94d6-40b3-8016-81a87e585e5b>",  # random v4
        "<urn:uuid:4b1682a8-f968-5701-83fc-7c6741dc6697>",  # name-based v5
        "<urn:uuid:86046623-b315-00d5-aeb8-2b2effff4750>",  # Linphone
        "<urn:uuid:00000000-0000-0000-0000-0000ccddeeff>",  # PJSIP host-name hash
        "<urn:uuid:00000000-0000-1000-8000-000000000001>",
        "<urn:uuid:00000000-0000-1000-8000-000000000000>",
        "<urn:uuid:00000000-0000-1000-8000-ffffffffffff>",
        "<urn:uuid:00000000-0000-1000-8000-01005e0000fb>",  # multicast
        "<urn:uuid:00000000-0000-2000-8000-001565aabbcc>",
        "<urn:uuid:00000000-0000-1000-8000-001565aabbc>",
        "<urn:uuid:00000000-0000-1000-8000-001565aabbccd>",
        "<urn:uuid:00000000-0000-1000-8000-0015-65aabbcc>",
        "<urn:uuid:00000000000010008000001565aabbcc>",
        "<urn:uuid:00000000-0000-1000-8000-00156gaabbcc>",
        "<urn:gsma:imei:35-209900-176148-1>",
        "<urn:uuid:>",
        "<>",
        '"',
        "",
        "urn:uuid:00000000-0000-1000-8000-001565aabbcc" + "0" * 1000,
        "<urn:uuid:00000000-0000-1000-8000-٠٠١٥٦٥aabbcc>",  # Arabic-Indic digits
    ],
)
def test_instance_without_mac(instance):
    facts = phone_facts(None, instance)
    assert (facts.mac, facts.mac_source) == (None, None)


def test_instance_from_contact_when_not_given():
    contact = (
        "<sip:1001@192.0.2.5:5060>;reg-id=1;"
        '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000B826C4283>"'
    )
    assert phone_facts("Grandstream GXP2130 1.0.7.25", contact_uri=contact) == PhoneFacts(
        "Grandstream", "GXP2130", "1.0.7.25", "000b826c4283", "sip_instance"
    )


def test_instance_argument_wins_over_contact_parameter():
    contact = '<sip:1001@192.0.2.5>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000B826C4283>"'
    random_v4 = "<urn:uuid:9374a213-94d6-40b3-8016-81a87e585e5b>"
    assert phone_facts(None, random_v4, contact).mac is None


# -- headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "mac"),
    [
        ({"Mac": "0c:38:3e:63:96:3b"}, "0c383e63963b"),  # Fanvil
        ([("X-Serialnumber", "000413924E28")], "000413924e28"),  # snom
        ([("x-mac", " 00-15-65-AA-BB-CC ")], "001565aabbcc"),
        (
            [("Ms-Device-Info", 'MAC="00-04-F2-AA-BB-CC",vendor="Polycom",version="5.1.0"')],
            "0004f2aabbcc",
        ),
        (
            [("Ms-Device-Info", "MAC=00-04-F2-AA-BB-CC, vendor=Polycom, version=5.1.0")],
            "0004f2aabbcc",
        ),
        ([("Via", "SIP/2.0/UDP 00:15:65:aa:bb:cc"), ("MAC", "001565aabbcc")], "001565aabbcc"),
        ([("X-Mac", "not a mac"), ("Mac", "0c383e63963b")], "0c383e63963b"),
    ],
)
def test_mac_from_header(headers, mac):
    facts = phone_facts("Fanvil X303 2.12.18.9", headers=headers)
    assert (facts.mac, facts.mac_source) == (mac, "header")
    assert (facts.vendor, facts.model) == ("Fanvil", "X303")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Grandstream-MAC": "000b826c4283"},  # not a header any vendor is known to send
        {"User-Agent": "00:15:65:aa:bb:cc"},
        {"Mac": "ff:ff:ff:ff:ff:ff"},
        {"Mac": "0c:38:3e:63:96"},
        {"X-Serialnumber": "FCH1234ABCD"},  # a serial number that is not a MAC
        {"Ms-Device-Info": "MAC=00-04-F2-AA-BB-CC-DD-EE,vendor=x,version=1"},  # EUI-64
        {"Ms-Device-Info": "XMAC=00-04-F2-AA-BB-CC"},
        {"Mac": "0c:38:3e:63:96:3b" + " " * 1000},
        [("Mac", None), (None, "0c383e63963b")],
        {},
    ],
)
def test_no_mac_from_header(headers):
    assert phone_facts(None, headers=headers).mac is None


def test_headers_of_a_parsed_request():
    request = parse_message(
        b"REGISTER sip:pbx.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-1\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:5008@pbx.example.com>;tag=1\r\n"
        b"To: <sip:5008@pbx.example.com>\r\n"
        b"Call-ID: reg-1\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"Contact: <sip:5008@192.0.2.7:5060>\r\n"
        b"User-Agent: Fanvil X303 2.12.18.9\r\n"
        b"Mac: 0c:38:3e:63:96:3b\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    facts = phone_facts(request.get("User-Agent"), None, "sip:5008@192.0.2.7:5060", request)
    assert facts == PhoneFacts("Fanvil", "X303", "2.12.18.9", "0c383e63963b", "header")


# -- Contact ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contact", "mac"),
    [
        ("<sip:001565aabbcc@192.0.2.5:5060>", "001565aabbcc"),
        ("sip:001565AABBCC@192.0.2.5", "001565aabbcc"),
        ('"Desk" <sips:00-15-65-aa-bb-cc@192.0.2.5;transport=tls>;expires=3600', "001565aabbcc"),
        (
            '<sip:6aa7e3f2-1c34-4cbb@10.0.0.9:5060;transport=tcp>;'
            '+u.sip!devicename.ccm.cisco.com="SEPB4A8B968DC75"',
            "b4a8b968dc75",
        ),
    ],
)
def test_mac_from_contact(contact, mac):
    facts = phone_facts(None, contact_uri=contact)
    assert (facts.mac, facts.mac_source) == (mac, "contact")


@pytest.mark.parametrize(
    "contact",
    [
        "<sip:1001@192.0.2.5:5060>",
        "<sip:441234567890@192.0.2.5>",  # twelve digits: a number, not a MAC
        "<sip:ffffffffffff@192.0.2.5>",
        "<sip:192.0.2.5:5060>",
        "<tel:+441234567890>",
        '<sip:1001@192.0.2.5>;+u.sip!devicename.ccm.cisco.com="CSFJDOE"',
        "*",
        "<sip:001565aabbcc@>",
        "<<<>>>",
        "sip:" + "a" * 5000 + "@example.com",
    ],
)
def test_no_mac_from_contact(contact):
    assert phone_facts(None, contact_uri=contact).mac is None


# -- order of trust -----------------------------------------------------------------------

INSTANCE = "<urn:uuid:00000000-0000-1000-8000-0015650000a1>"
UA = "Yealink SIP-T46S 66.86.0.15 0015650000a2"
HEADERS = {"X-Mac": "0015650000a3"}
CONTACT = "<sip:0015650000a4@192.0.2.5>"


@pytest.mark.parametrize(
    ("user_agent", "instance", "contact", "headers", "mac", "source"),
    [
        (UA, INSTANCE, CONTACT, HEADERS, "0015650000a1", "sip_instance"),
        (UA, None, CONTACT, HEADERS, "0015650000a2", "user_agent"),
        ("Yealink SIP-T46S 66.86.0.15", None, CONTACT, HEADERS, "0015650000a3", "header"),
        ("Yealink SIP-T46S 66.86.0.15", None, CONTACT, {}, "0015650000a4", "contact"),
        ("Yealink SIP-T46S 66.86.0.15", None, None, {}, None, None),
        # A source that has only a bad MAC gives way to the next one.
        (UA, "<urn:uuid:00000000-0000-1000-8000-ffffffffffff>", None, {}, "0015650000a2",
         "user_agent"),
    ],
)
def test_order_of_trust(user_agent, instance, contact, headers, mac, source):
    facts = phone_facts(user_agent, instance, contact, headers)
    assert (facts.mac, facts.mac_source) == (mac, source)
    assert (facts.vendor, facts.model, facts.firmware) == ("Yealink", "SIP-T46S", "66.86.0.15")


def test_mac_sources_vocabulary():
    assert MAC_SOURCES == ("sip_instance", "user_agent", "header", "contact")


# -- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_agent",
    [
        "",
        " ",
        "\x00",
        "Yealink",
        "Yealink ",
        "Yealink \x00 \x00",
        "PolycomVVX-VVX_-UA/",
        "Cisco-/",
        "Cisco/-",
        "snom",
        "Bria release",
        "Z 5.",
        "Grandstream Model HW",
        "Téléphone 1.0 ☎",
        "Yealink SIP-T46S ٦٦.٨٦.٠.١٥",  # non-ASCII digits are not a version
        "Yealink " + "SIP-T46S " * 10000,
        "PolycomVVX-VVX_410-UA/" + "5." * 50000,
        "Yealink SIP-T46S 66.86.0.15 " + "0" * 600,
        "a" * 1_000_000,
    ],
)
def test_malformed_user_agent_never_raises(user_agent):
    facts = phone_facts(user_agent)
    assert isinstance(facts, PhoneFacts)


def test_huge_user_agent_cut_does_not_invent_a_mac():
    # The cut at the length limit must not leave half of a long hex run as a MAC.
    user_agent = "Yealink SIP-T46S 66.86.0.15 " + "a" * 484 + " " + "001565aabbcc00112233"
    assert phone_facts(user_agent).mac is None


def test_nothing_at_all():
    assert phone_facts(None) == PhoneFacts(None, None, None, None, None)
    assert phone_facts(None, None, None, ()) == PhoneFacts()


# -- properties -----------------------------------------------------------------------------

# Text biased towards the shapes the parsers look for, so that hypothesis
# reaches deep into them rather than bouncing off the first character.
_pieces = st.sampled_from(
    [
        "Yealink ", "PolycomVVX-VVX_", "-UA/", "Cisco-CP", "Cisco/", "snom", "Grandstream ",
        "Model HW ", " SW ", " DevId ", "Panasonic_", "Gigaset ", "Aastra", " MAC:", " V:",
        "Avaya ", "OBIHAI/OBi", "Linphone", "Zoiper", "Z ", "Bria ", " release ", "Htek ", "ALE ",
        "urn:uuid:", "00000000-0000-1000-8000-", "00000000-0000-0000-0000-", "<", ">", '"',
        "sip:", "@", ";", "(", ")", "/", "_", "-", ":", ".", " ", "\t", "001565", "aabbcc",
        "ff", "01", "00", "0", "1.2.3", "SEP", "+u.sip!devicename.ccm.cisco.com=", "MAC=",
    ]
)
_texty = st.one_of(st.text(max_size=80), st.lists(_pieces, max_size=25).map("".join))
_header_names = st.sampled_from(["Mac", "X-Mac", "X-Serialnumber", "Ms-Device-Info", "Via", "mac"])


def _check(facts: PhoneFacts) -> None:
    assert isinstance(facts, PhoneFacts)
    if facts.mac is None:
        assert facts.mac_source is None
    else:
        assert normalize_mac(facts.mac) == facts.mac
        assert facts.mac != "000000000000"
        assert int(facts.mac[:2], 16) & 1 == 0  # unicast
        assert facts.mac_source in MAC_SOURCES
    for text in (facts.vendor, facts.model, facts.firmware):
        assert text is None or (isinstance(text, str) and text)


@settings(max_examples=400, deadline=None)
@given(
    user_agent=st.none() | _texty,
    instance=st.none() | _texty,
    contact=st.none() | _texty,
    headers=st.lists(st.tuples(_header_names | st.text(max_size=10), _texty), max_size=3),
)
def test_arbitrary_text_never_raises(user_agent, instance, contact, headers):
    _check(phone_facts(user_agent, instance, contact, headers))
    _check(phone_facts(user_agent, instance, contact, dict(headers)))


@settings(max_examples=200, deadline=None)
@given(mac=st.binary(min_size=6, max_size=6), separator=st.sampled_from(["", ":", "-"]))
def test_any_unicast_mac_in_a_yealink_user_agent_is_found(mac, separator):
    written = separator.join(f"{octet:02X}" for octet in mac)
    facts = phone_facts(f"Yealink SIP-T46S 66.86.0.15 {written}")
    expected = mac.hex() if mac[0] & 1 == 0 and any(mac) else None
    assert facts.mac == expected
    _check(facts)


@settings(max_examples=200, deadline=None)
@given(
    node=st.binary(min_size=6, max_size=6),
    prefix=st.sampled_from(["0000-1000-8000", "0000-0000-0000"]),
)
def test_instance_node_is_the_mac_unless_it_cannot_be_one(node, prefix):
    facts = phone_facts(None, f"<urn:uuid:00000000-{prefix}-{node.hex().upper()}>")
    usable = node[0] & 1 == 0 and node[:2] != b"\0\0"
    assert facts.mac == (node.hex() if usable else None)
    _check(facts)


@settings(max_examples=200, deadline=None)
@given(uuid=st.uuids(version=4))
def test_random_uuid_never_gives_a_mac(uuid):
    assert phone_facts(None, f"<urn:uuid:{uuid}>").mac is None
