"""What a REGISTER says about the phone behind it: vendor, model, firmware, MAC.

:func:`phone_facts` feeds the registered-phones table (pbx-rest-api.md,
"Phone Registration & MAC/IP Tracking"). It is pure and runs on every
REGISTER, so every pattern is compiled once, inputs are clipped before any
pattern sees them, and User-Agent results are cached (a site has few
distinct User-Agents and they repeat on every refresh).

Vendor, model and firmware come from the User-Agent only, and only from the
formats vendors really send (the table in ``tests/test_phones.py`` has one
example of each). A User-Agent that matches none gives vendor, model and
firmware None: nothing is guessed from a MAC's OUI or from headers.

MAC sources (``mac_source``), in order of trust; the first that gives a MAC wins:

``"sip_instance"``
    The ``+sip.instance`` UUID URN (RFC 5626 §4.1) when the firmware built
    it from the MAC: ``urn:uuid:00000000-0000-1000-8000-<MAC>`` (the form of
    the RFC 5626 examples, seen from Grandstream and Aastra phones among
    others) or ``urn:uuid:00000000-0000-0000-0000-<MAC>`` (Cisco, Obihai). Only these
    two prefixes count: random v4 UUIDs, name-based v3/v5 ones and real
    time-based v1 ones (whose node is the MAC of whatever host generated
    them, not necessarily the phone) never give a MAC. Twenty fixed zero
    digits do not happen by chance, so the one false positive left is a
    made-up node: PJSIP's default instance id is ``0000`` followed by a
    32-bit hash of the host name, so a node starting with two zero octets
    (OUIs 00:00:xx, 1980s assignments no phone carries) is rejected too.
    With no ``instance`` argument, the Contact's ``+sip.instance`` is used.
``"user_agent"``
    A MAC where a recognised vendor's User-Agent carries one: the last word
    (Yealink ``... 66.86.0.15 001565aabbcc``, Fanvil, Htek, Avaya, ALE),
    after ``_`` in the Polycom version, in parentheses (Cisco 3PCC,
    Panasonic), after ``;`` (Gigaset), after ``DevId`` (Grandstream) or
    ``MAC:`` (Aastra); 12 bare hex digits or six pairs joined by ``:`` or
    ``-``. In any User-Agent, recognised or not, a word that is six pairs
    joined by one separator (optionally labelled ``MAC:``/``MAC=``) counts;
    12 bare hex digits alone do not, as they could be a build number.
``"header"``
    A header whose value is the MAC: ``Mac`` (Fanvil), ``X-Serialnumber``
    (snom, whose serial number is the MAC) and the generic ``X-Mac``; or the
    ``MAC=`` field of ``Ms-Device-Info`` ([MS-SIPREGE] §2.2.1.7). These
    come after the User-Agent because any hop could add a header.
``"contact"``
    The Contact URI's user part when it is a MAC (some provisioning systems
    register ``sip:001565aabbcc@...``), but not when it is all decimal
    digits, which is far likelier a 12-digit number than a MAC; or Cisco's
    ``+u.sip!devicename.ccm.cisco.com="SEP<MAC>"`` Contact parameter. Weakest,
    because the user part is whatever the configuration put there.

The REST API of the seed only tells ``"sip_registration"`` (the phone said
it) from ``"provisioning"``: all four values above are kinds of
``"sip_registration"``, and the REST layer reports them as that.

Every MAC returned is in the form of :func:`pbxd.store.models.normalize_mac`
(12 lower-case hex digits) and names one interface: all-zero, broadcast and
multicast (I/G bit set) addresses are rejected whatever their source.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from pbxd.sip.headers import Address, unquoted
from pbxd.sip.message import Message
from pbxd.store.models import normalize_mac

# Where a MAC can come from, in order of trust (see the module docstring).
MAC_SOURCES = ("sip_instance", "user_agent", "header", "contact")

# Real values are far shorter; the limits only bound the work a hostile
# REGISTER can cause.
_USER_AGENT_LIMIT = 512
_INSTANCE_LIMIT = 128
_CONTACT_LIMIT = 2048
_HEADER_LIMIT = 512

_FLAGS = re.ASCII | re.IGNORECASE
_HEX2 = "[0-9a-f]{2}"
_BARE_MAC = re.compile("[0-9a-f]{12}", _FLAGS)
# Six pairs joined by one kind of separator: 00:15:65:aa:bb:cc or 00-15-65-...
_SEPARATED_MAC = f"{_HEX2}(?P<sep>[:-]){_HEX2}(?:(?P=sep){_HEX2}){{4}}"
_JOINED_MAC = re.compile(_SEPARATED_MAC, _FLAGS)
_LABELLED_MAC = re.compile(f"(?:mac[:=])?(?P<mac>{_SEPARATED_MAC})", _FLAGS)
_UA_WORD_SPLIT = re.compile(r"[\s()\[\]<>;,]+")


Headers = Mapping[str, str] | Sequence[tuple[str, str]] | Message


@attrs.frozen
class PhoneFacts:
    """What a registration tells about the device; None where it does not say."""

    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    mac: str | None = None
    mac_source: str | None = None


_UNKNOWN = PhoneFacts()


def _unicast(mac: str) -> str | None:
    """``mac`` (12 lower-case hex digits) if it can name a single interface."""
    if mac == "000000000000" or int(mac[1], 16) & 1:  # I/G bit: multicast, broadcast
        return None
    return mac


def _mac_word(text: str) -> str | None:
    """A unicast MAC written as 12 hex digits or as six joined pairs, else None."""
    if _BARE_MAC.fullmatch(text) or _JOINED_MAC.fullmatch(text):
        return _unicast(normalize_mac(text))  # type: ignore[arg-type]
    return None


# -- +sip.instance -------------------------------------------------------------

_MAC_UUID = re.compile(r"00000000-0000-(?:1000-8000|0000-0000)-([0-9a-f]{12})", _FLAGS)


def _mac_from_instance(instance: str) -> str | None:
    if len(instance) > _INSTANCE_LIMIT:
        return None
    # Accept the value as the Contact carries it ("<urn:uuid:...>", quotes
    # and all) or already unwrapped.
    text = instance.strip().strip('"').strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if text[:9].lower() == "urn:uuid:":
        text = text[9:]
    match = _MAC_UUID.fullmatch(text)
    if match is None or match[1].startswith("0000"):  # PJSIP's host-name hash
        return None
    return _unicast(match[1].lower())


# -- User-Agent ------------------------------------------------------------------


_POLYCOM_FAMILY_NUMBER = re.compile(r"([a-z]+)_?([0-9a-z]+)", _FLAGS)
_CISCO_CP_NUMBER = re.compile(r"CP(?=[0-9])", _FLAGS)


def _polycom_model(raw: str) -> str:
    # VVX_410, VVX450, SPIP_331, Trio_8800, Edge_E350 -> "VVX 410", "Edge E350"
    split = _POLYCOM_FAMILY_NUMBER.fullmatch(raw)
    return f"{split[1]} {split[2]}" if split else raw


def _cisco_model(raw: str) -> str:
    # Cisco-CP8841/11.0 names the CP-8841; 3PCC firmware already writes CP-8841.
    return _CISCO_CP_NUMBER.sub("CP-", raw, count=1) if raw[:2].upper() == "CP" else raw


# (pattern, vendor, model rewrite). Tried in order, anchored at the start;
# groups: model, firmware, mac, and vendor where one pattern serves two brands.
_UA_PATTERNS: tuple[tuple[re.Pattern[str], str, Callable[[str], str] | None], ...] = tuple(
    (re.compile(pattern, _FLAGS), vendor, rewrite)
    for pattern, vendor, rewrite in (
        # PolycomVVX-VVX_410-UA/5.9.5.0614, PolycomVVX-VVX_150-UA/6.4.1.2280_482567164887,
        # PolycomSoundPointIP-SPIP_331-UA/4.0.x, PolyEdge-Edge_E350-UA/8.0.0.1234,
        # "Polycom/5.5.0.20556 PolycomVVX-VVX_500-UA/5.5.0.20556", "FileTransport ..." (HTTP)
        (
            r"(?:FileTransport\s+)?(?:Polycom/\S+\s+)?Poly(?:com)?[a-z]*-"
            r"(?P<model>[a-z]+_?[0-9a-z]*?)-UA/(?P<firmware>[0-9][0-9a-z.]*?)"
            r"(?:_(?P<mac>[0-9a-f]{12}))?(?=\s|$)",
            "Polycom",
            _polycom_model,
        ),
        # Cisco-CP8841/11.0, Cisco-CP-8841-3PCC/11.0 (00562b043615), Cisco-ATA191-MPP/11-1-0MSR3-9
        (
            r"Cisco-(?P<model>[0-9a-z-]+)/(?P<firmware>[^\s(]+)"
            r"(?:\s*\((?P<mac>[0-9a-f]{12})\))?",
            "Cisco",
            _cisco_model,
        ),
        # Cisco/SPA504G-7.6.2c, Cisco/SPA122-1.4.1(SR5)
        (r"Cisco/(?P<model>[0-9a-z-]+?)-(?P<firmware>[0-9]+\.\S*)", "Cisco", None),
        # snom720/10.1.33.33, snomD785-SIP 10.1.169.16, snom105-3.56p, snom-m3-SIP/02.11.00
        (
            r"snom[\s-]?(?P<model>[a-z]*[0-9]+[a-z]*)(?:-SIP)?"
            r"(?:[/\s-]+(?P<firmware>[0-9][0-9a-z._()-]*))?",
            "Snom",
            None,
        ),
        # Provisioning form: Grandstream Model HW GXP2200 V2.2A SW 1.0.1.33 DevId 000b82462d97
        (
            r"Grandstream\s+Model\s+HW\s+(?P<model>\S+)(?:\s+V\S+)?\s+SW\s+(?P<firmware>\S+)"
            r"(?:\s+DevId\s+(?P<mac>[0-9a-f]{12}))?",
            "Grandstream",
            None,
        ),
        # Panasonic_KX-UT113/01.133 (0080f0c8c381)
        (
            r"Panasonic[_\s-](?P<model>[0-9a-z-]+)/(?P<firmware>[^\s(]+)"
            r"(?:\s*\((?P<mac>[0-9a-f]{12})\))?",
            "Panasonic",
            None,
        ),
        # Gigaset N870 IP PRO/83.V2.12.0+build.e6c1b5b;7C2F80123456
        (
            r"Gigaset\s+(?P<model>[^/;]+?)\s*/(?P<firmware>[^;\s]+)(?:;(?P<mac>[0-9a-f]{12}))?",
            "Gigaset",
            None,
        ),
        # Aastra57i MAC:00-08-5D-19-94-B7 V:2.3.1.26-SIP
        (
            r"(?P<vendor>Aastra|Mitel)\s?(?P<model>[0-9][0-9a-z]*)\s+"
            r"MAC:(?P<mac>[0-9a-f]{2}(?:-[0-9a-f]{2}){5})\s+V:(?P<firmware>\S+)",
            "Aastra",
            None,
        ),
        # Aastra 6731i/3.2.2.3077, Mitel 6930/6.4.0.132
        (r"(?P<vendor>Aastra|Mitel)\s?(?P<model>[0-9][0-9a-z]*)/(?P<firmware>\S+)", "Aastra", None),
        # Avaya H175 Collaboration Station H1xx_SIP-R1_0_2_3_3050.tar
        (r"Avaya\s+(?P<model>H[0-9]{3})\s.*?(?P<firmware>H1xx_SIP-R[0-9_]+)", "Avaya", None),
        # OBIHAI/OBi1062-5.0.0.1542
        (r"OBIHAI/(?P<model>OBi[0-9a-z]+?)-(?P<firmware>[0-9][0-9a-z.]*)", "Obihai", None),
        # Linphone/3.6.1 (eXosip2/4.1.0), LinphoneiOS/4.5.1 (...), Linphone Desktop/4.4.10 (...)
        (r"Linphone[ -]?(?P<model>[a-z]*)/(?P<firmware>[0-9][0-9a-z.+-]*)?", "Linphone", None),
        # Zoiper rev.5415, Zoiper v2.10.20.4_1, Zoiper for Windows 2.38 rev.16635, Zoiper/5.5.10
        (
            r"Zoiper(?:\s+for\s+(?P<model>[a-z]+))?"
            r"(?:[\s/]+v?(?P<firmware>(?:rev\.)?[0-9][0-9a-z._-]*))?(?=\s|$)",
            "Zoiper",
            None,
        ),
        # Zoiper 5: "Z 5.6.6 v2.10.20.5", "Z 5.2.19 rv2.8.99" (the library version must follow)
        (r"Z\s+(?P<firmware>[0-9]+\.[0-9][0-9a-z.]*)\s+r?v[0-9]", "Zoiper", None),
        # MicroSIP/3.21.3
        (r"MicroSIP/(?P<firmware>[0-9][0-9a-z.]*)", "MicroSIP", None),
        # Bria 5 release 5.9.1 stamp 106645, Bria iOS release 3.9.5 stamp 38501, Bria iOS 3.1.1
        (
            r"(?:CounterPath\s+)?Bria"
            r"(?:\s+(?P<model>(?!release\b)[^\s0-9]\S*|[0-9]+(?=\s+release\b)))?"
            r"\s+(?:release\s+)?(?P<firmware>[0-9]+\.[0-9a-z.]+)",
            "Bria",
            None,
        ),
        # X-Lite release 5.8.3 stamp 102651
        (r"X-Lite\s+(?:release\s+)?(?P<firmware>[0-9][0-9a-z.]*)", "X-Lite", None),
        # Telephone 1.6 (the macOS softphone)
        (r"Telephone[\s/](?P<firmware>[0-9]+(?:\.[0-9]+)+)(?=\s|$)", "Telephone", None),
    )
)

# Vendors writing "<Vendor> <model words> <version> [<MAC>]": Yealink SIP-T46S 66.86.0.15,
# Grandstream GXP2170 1.0.11.3, Fanvil X303 2.12.18.9 0c383e63963b, Htek UC912G 001fc1200b41,
# ALE M3-CE 2.11.01.1604 3c28a620089e, Avaya one-X Deskphone 7.1.15.1.3 b4475ea2e9a0.
_WORD_VENDORS = {
    "yealink": "Yealink",
    "grandstream": "Grandstream",
    "fanvil": "Fanvil",
    "htek": "Htek",
    "ale": "Alcatel-Lucent",
    "alcatel-lucent": "Alcatel-Lucent",
    "avaya": "Avaya",
    "polycom": "Polycom",
    "zultys": "Zultys",
    "cisco": "Cisco",
}
_VERSION_WORD = re.compile(r"v?([0-9]+(?:\.[0-9a-z_+-]+)+)", _FLAGS)
_MODEL_WORD = re.compile(r"[0-9a-z][0-9a-z_.+-]*", _FLAGS)
_VENDOR_NAMES = {"aastra": "Aastra", "mitel": "Mitel"}


def _from_words(vendor: str, words: list[str]) -> PhoneFacts:
    mac = _mac_word(words[-1]) if words else None
    if mac is not None:
        words = words[:-1]
    model: list[str] = []
    firmware = None
    for word in words:
        version = _VERSION_WORD.fullmatch(word)
        if version is not None:
            firmware = version[1]
            break
        if not _MODEL_WORD.fullmatch(word):
            break
        model.append(word)
    return PhoneFacts(vendor, " ".join(model) or None, firmware, mac)


def _labelled_mac(user_agent: str) -> str | None:
    """The first unambiguous MAC word anywhere in a User-Agent."""
    for word in _UA_WORD_SPLIT.split(user_agent):
        match = _LABELLED_MAC.fullmatch(word)
        if match is not None and (mac := _mac_word(match["mac"])):
            return mac
    return None


@functools.lru_cache(maxsize=1024)
def _user_agent_facts(user_agent: str) -> PhoneFacts:
    facts = _UNKNOWN
    for pattern, vendor, rewrite in _UA_PATTERNS:
        match = pattern.match(user_agent)
        if match is not None:
            found = match.groupdict()
            model = found.get("model") or None
            if model and rewrite:
                model = rewrite(model)
            raw_mac = found.get("mac")
            facts = PhoneFacts(
                _VENDOR_NAMES.get((found.get("vendor") or "").lower(), vendor),
                model,
                found.get("firmware") or None,
                _mac_word(raw_mac) if raw_mac else None,
            )
            break
    else:
        first, *rest = user_agent.split() or [""]
        vendor = _WORD_VENDORS.get(first.lower())
        if vendor is not None:
            facts = _from_words(vendor, rest)
    if facts.mac is None:
        facts = attrs.evolve(facts, mac=_labelled_mac(user_agent))
    if facts.mac is not None:
        facts = attrs.evolve(facts, mac_source="user_agent")
    return facts


def _clip_user_agent(user_agent: str) -> str:
    user_agent = user_agent.strip()
    if len(user_agent) > _USER_AGENT_LIMIT:
        # Drop the word the cut went through: half a hex run must not pass for a MAC.
        user_agent = user_agent[:_USER_AGENT_LIMIT].rsplit(None, 1)[0]
    return user_agent


# -- headers and Contact ---------------------------------------------------------

# Headers whose whole value is the MAC (see the module docstring for whose they are).
_MAC_VALUE_HEADERS = frozenset({"mac", "x-mac", "x-serialnumber"})
_MAC_HEADERS = (*_MAC_VALUE_HEADERS, "ms-device-info")
_MS_DEVICE_INFO_MAC = re.compile(
    r'(?:^|[\s,;])MAC\s*=\s*"?([0-9a-f]{2}(?:-[0-9a-f]{2}){5})"?(?=$|[\s,;])', _FLAGS
)
_CISCO_DEVICE_NAME = "+u.sip!devicename.ccm.cisco.com"


def _header_pairs(headers: Headers) -> Iterable[tuple[str, str]]:
    if isinstance(headers, Message):
        return [(name, value) for name in _MAC_HEADERS for value in headers.get_all(name)]
    return headers.items() if isinstance(headers, Mapping) else headers


def _mac_from_headers(headers: Headers) -> str | None:
    for name, value in _header_pairs(headers):
        if not isinstance(name, str) or not isinstance(value, str) or len(value) > _HEADER_LIMIT:
            continue
        key = name.strip().lower()
        mac = None
        if key in _MAC_VALUE_HEADERS:
            mac = _mac_word(value.strip())
        elif key == "ms-device-info":
            match = _MS_DEVICE_INFO_MAC.search(value)
            mac = _mac_word(match[1]) if match else None
        if mac is not None:
            return mac
    return None


def _parse_contact(contact_uri: str) -> Address | None:
    if len(contact_uri) > _CONTACT_LIMIT:
        return None
    try:
        return Address.parse(contact_uri.strip())
    except ValueError:  # SipParseError: not a Contact we can read
        return None


def _mac_from_contact(contact: Address) -> str | None:
    device = contact.param(_CISCO_DEVICE_NAME)
    device = unquoted(device) if device else None
    if device and device[:3].upper() == "SEP" and (mac := _mac_word(device[3:])):
        return mac
    uri = contact.sip_uri
    user = uri.unescaped_user if uri is not None else None
    if user:
        mac = _mac_word(user)
        if mac is not None and not mac.isdigit():  # all digits: a phone number
            return mac
    return None


# -- the whole picture -------------------------------------------------------------


def phone_facts(
    user_agent: str | None,
    instance: str | None = None,
    contact_uri: str | None = None,
    headers: Headers = (),
) -> PhoneFacts:
    """What a REGISTER says about the phone: vendor/model/firmware from the
    User-Agent, the MAC from the most trusted source that has one.

    ``instance`` is the ``+sip.instance`` value (``"<urn:uuid:...>"``, quoted
    or not); ``contact_uri`` the Contact URI or the whole Contact value;
    ``headers`` the request's headers: a mapping, (name, value) pairs, or the
    request itself.
    Never raises on malformed input: what cannot be read is not known.
    """
    facts = _user_agent_facts(_clip_user_agent(user_agent)) if user_agent else _UNKNOWN
    contact = _parse_contact(contact_uri) if contact_uri else None
    if instance is None and contact is not None:
        instance = contact.param("+sip.instance")
    mac = _mac_from_instance(instance) if instance else None
    if mac is not None:
        return attrs.evolve(facts, mac=mac, mac_source="sip_instance")
    if facts.mac is not None:
        return facts
    mac = _mac_from_headers(headers)
    if mac is not None:
        return attrs.evolve(facts, mac=mac, mac_source="header")
    mac = _mac_from_contact(contact) if contact is not None else None
    if mac is not None:
        return attrs.evolve(facts, mac=mac, mac_source="contact")
    return facts
