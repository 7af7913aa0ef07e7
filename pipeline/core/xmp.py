"""An XMP packet (TIFF tag 700) through ops that move or resize its page.

XMP holds what archives publish with a scan (``dc:rights``, ``dc:creator``, ``dc:title``,
``xmpRights:*``, Photoshop's credit fields, IPTC Core), and also properties that state the
page's geometry, which a ``crop``, ``downsample``, ``rotate`` or ``flip`` makes untrue. So
the packet is rewritten (:func:`rewritten`): each top-level property (an attribute of an
``rdf:Description`` under ``rdf:RDF``, or a child element of it) that tiffpipe knows the new
value of is updated, each that it cannot keep true is removed, everything else is kept:

- ``tiff:ImageWidth``, ``tiff:ImageLength``, ``exif:PixelXDimension``,
  ``exif:PixelYDimension``: the output page's size;
- ``tiff:XResolution``, ``tiff:YResolution``, ``tiff:ResolutionUnit``: the output's
  resolution tags (a quarter turn swaps x and y, a downsample by k divides them by k); a
  page without resolution tags has the packet's own scaled so;
- ``exif:FocalPlaneXResolution``, ``exif:FocalPlaneYResolution`` (pixels per unit of the
  camera's sensor): scaled and swapped as the resolution (an output pixel covers k x k
  sensor pixels after a downsample by k); a value that is no number is removed;
- ``tiff:Orientation``: removed after a rotation or flip, as the Orientation tag is (the
  pixels are stored as they are shown);
- removed: every ``crs:`` property (Camera Raw's develop settings: its crop, and masks and
  retouches placed on the original's pixels, which Adobe's tools apply again on opening),
  ``exif:SubjectArea``, ``exif:SubjectLocation``, ``mwg-rs:Regions``,
  ``Iptc4xmpExt:ImageRegion`` (positions on the original's pixels);
- a property to update that is not a plain value (a struct, an array) is removed.

Through any chain, the properties that state how the page's samples are stored are made the
output's as merge writes it (:class:`Form`), so a ``to_gray``, ``convert``, ``select_bands``,
a 1-bit output or another compression leaves none stale:

- ``tiff:BitsPerSample`` (an ``rdf:Seq``, an item a sample: its items rewritten),
  ``tiff:SamplesPerPixel``, ``tiff:PhotometricInterpretation``, ``tiff:Compression``,
  ``tiff:PlanarConfiguration`` (always 1: merge writes samples interleaved);
- ``photoshop:ColorMode`` made the output's (Bitmap, Gray, Indexed, RGB, CMYK) and
  ``exif:ColorSpace`` removed (sRGB or uncalibrated: tiffpipe does not know it of the new
  pixels) when the output's colour model is not the input page's; ``photoshop:ColorMode``
  is removed when no mode fits (a page of bands);
- ``photoshop:ICCProfile`` (the name of the ICC profile embedded) removed when the output
  carries no ICC profile (a ``to_gray`` drops an RGB one, as a 1-bit output does).

Each output is a derivative, a new instance of the input's document, and its packet says so
(:class:`Derivation`, as XMP's media management schema and Adobe's tools do; DAMs and
FADGI-minded archives trace an access copy to its master by it):

- ``xmpMM:InstanceID``: a new ``xmp.iid:`` + UUID4 (copied, two files would claim to be the
  same instance); ``xmpMM:DocumentID`` kept (the same document), ``xmpMM:OriginalDocumentID``
  too;
- ``xmpMM:DerivedFrom``: the input's InstanceID and DocumentID (``stRef:instanceID``,
  ``stRef:documentID``), those it had (none: the input's own DerivedFrom, of its source, is
  removed);
- ``xmpMM:History``: an event appended to the input's ``rdf:Seq`` (kept: the document's
  past), or a new one: ``stEvt:action`` ``converted`` (one of the actions the XMP
  specification defines; ``derived`` is not), ``stEvt:instanceID`` (the new one),
  ``stEvt:when`` (UTC), ``stEvt:softwareAgent`` (``tiffpipe <version>``),
  ``stEvt:parameters`` (the ops, :func:`ops_parameters`).

Nothing else is touched (the properties of documents nested in ``xmpMM:Pantry`` describe
those documents). A packet that needs no change (and is not stamped: no
:class:`Derivation` given) is kept byte for byte. One that does is written
again from its parsed tree with the prefixes and namespace declarations where the packet
had them; the ``<?xpacket?>`` wrapper and what lies outside ``x:xmpmeta`` are kept as they
are, and the whitespace padding is shortened or lengthened so that the packet keeps its
length when the padding allows (the convention that lets a tool edit it in place). A packet
that does not parse is dropped, and said so.

Pure module: bytes in, bytes out. ``xml.etree`` is imported when a packet is parsed.
"""

from __future__ import annotations

import functools
import re
import time
from fractions import Fraction
from typing import Any

from pipeline.core.record import record

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
TIFF = "http://ns.adobe.com/tiff/1.0/"
EXIF = "http://ns.adobe.com/exif/1.0/"
CRS = "http://ns.adobe.com/camera-raw-settings/1.0/"
MWG_RS = "http://www.metadataworkinggroup.com/schemas/regions/"
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
PHOTOSHOP = "http://ns.adobe.com/photoshop/1.0/"
XML = "http://www.w3.org/XML/1998/namespace"
XMP_MM = "http://ns.adobe.com/xap/1.0/mm/"
ST_EVT = "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
ST_REF = "http://ns.adobe.com/xap/1.0/sType/ResourceRef#"
#: the prefixes what was done is said with (a packet may bind its own), and that a
#: namespace the packet does not declare is declared with
PREFIXES = {TIFF: "tiff", EXIF: "exif", CRS: "crs", MWG_RS: "mwg-rs", IPTC_EXT: "Iptc4xmpExt",
            PHOTOSHOP: "photoshop", XMP_MM: "xmpMM", ST_EVT: "stEvt", ST_REF: "stRef"}
#: the History event of a derivative: XMP's ResourceEvent defines "converted" (and copied,
#: created, cropped, edited, filtered, formatted, ...: not "derived", which Photoshop writes
#: besides its "converted")
ACTION = "converted"
#: properties that state positions on the original's pixels: removed
POSITIONS = {(EXIF, "SubjectArea"), (EXIF, "SubjectLocation"), (MWG_RS, "Regions"),
             (IPTC_EXT, "ImageRegion")}
#: resolution-like pairs, (x, y): scaled and swapped as the page's pixels are
RESOLUTIONS = (("XResolution", "YResolution", TIFF),
               ("FocalPlaneXResolution", "FocalPlaneYResolution", EXIF))
#: the names of the properties a :class:`Form` rules (a packet naming none is kept unread)
FORM_NAMES = (b"BitsPerSample", b"SamplesPerPixel", b"PhotometricInterpretation",
              b"Compression", b"PlanarConfiguration", b"ColorMode", b"ColorSpace",
              b"ICCProfile")
#: the start of the packet's root element (not a processing instruction, comment, doctype)
_ROOT = re.compile(rb"<[^?!]")
_DROP = object()


@record(frozen=True)
class Form:
    """How the output page's samples are stored, as merge writes them, for its XMP:
    ``bits`` (each sample's BitsPerSample: SamplesPerPixel is their count),
    ``photometric`` and ``compression`` (the TIFF codes written); ``recoloured``: its colour
    model is not the input page's (``photoshop:ColorMode`` becomes ``mode``, None: removed,
    and ``exif:ColorSpace`` is removed); ``icc`` False: the output carries no ICC profile
    (``photoshop:ICCProfile``, the embedded profile's name, is removed)."""

    bits: tuple[int, ...]
    photometric: int
    compression: int
    recoloured: bool = False
    mode: int | None = None
    icc: bool = True


@record(frozen=True)
class Reshape:
    """What a chain did to a page, for its XMP: the output's ``width`` and ``height``;
    ``turned``: rotated or flipped (the Orientation tag is dropped); ``transposed``: x and
    y swapped; ``scale``: output pixels per input pixel along the output's x and y (after
    the swap; (1, 1): no resize); ``resolution``: the output's XResolution and YResolution
    as written (rationals ``(n, d)`` or floats; None: it has none) and ``unit`` its
    ResolutionUnit. ``moved``: False when the page keeps its size and place (the geometric
    properties are left as they are); ``form``: the output's samples (None: not known, the
    properties stating them are left as they are)."""

    width: int
    height: int
    turned: bool
    transposed: bool
    scale: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))
    resolution: tuple[Any, Any] | None = None
    unit: int = 2
    moved: bool = True
    form: Form | None = None


@record(frozen=True)
class XmpOutcome:
    """The output's packet (None: dropped) and what was done with it, in words: ``kept as
    is``, ``rewritten: updated ...; removed ...`` or ``dropped: why``."""

    packet: bytes | None
    said: str


@record(frozen=True)
class Derivation:
    """An output as a derivative, for its packet (module docstring): its new
    ``xmpMM:InstanceID`` (``instance``), and its History event's ``stEvt:when`` (ISO 8601,
    UTC), ``stEvt:softwareAgent`` (``agent``) and ``stEvt:parameters`` (the ops). One per
    output file: its pages' packets share it."""

    instance: str
    when: str
    agent: str
    parameters: str


def new_instance_id() -> str:
    """A new ``xmpMM:InstanceID``, as Adobe's tools write one (a test replaces it)."""
    import uuid

    return f"xmp.iid:{uuid.uuid4()}"


def utc_now() -> str:
    """Now, as an XMP date in UTC (``2026-12-07T13:22:06Z``; a test replaces it)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def derivation(ops: list[dict[str, Any]], agent: str) -> Derivation:
    """The :class:`Derivation` of an output the op chain ``ops`` makes, now."""
    return Derivation(new_instance_id(), utc_now(), agent, ops_parameters(ops))


#: the longest ``stEvt:parameters`` written (characters): a user op's parameters may be a
#: long JSON value, which every output page's packet would carry again
PARAMETERS_MAX = 1000


def ops_parameters(ops: list[dict[str, Any]]) -> str:
    """The op chain in short, for ``stEvt:parameters``: ``gaussian_blur sigma=2; crop x=10
    y=20 width=50 height=40`` (a value that is no string or number as compact JSON; one not
    given, None, left out: ``convert dtype=uint8``, not ``in_range=null ...``), cut
    to :data:`PARAMETERS_MAX` characters (its end ``...``)."""
    import json

    def value(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))

    said = "; ".join(" ".join([str(op.get("op")), *(
        f"{k}={value(v)}" for k, v in op.items() if k != "op" and v is not None)])
        for op in ops) or "no ops"
    return said if len(said) <= PARAMETERS_MAX else said[:PARAMETERS_MAX - 3] + "..."


def rewritten(packet: bytes, reshape: Reshape, derived: Derivation | None = None
              ) -> XmpOutcome:
    """``packet`` (tag 700's bytes) for a page the chain reshaped, stamped as the derivative
    ``derived`` (None: not stamped; module docstring)."""
    from xml.etree import ElementTree as ET

    try:
        text = packet.decode("utf-8")
    except UnicodeDecodeError:
        return XmpOutcome(None, "dropped: it is not UTF-8 text (tiffpipe reads UTF-8 XMP "
                                "only), and it may state the input page's size")
    begin = text.find("?>") + 2 if text.startswith("<?xpacket") else 0
    found = _ROOT.search(packet, len(text[:begin].encode("utf-8")))
    trailer = packet.rfind(b"<?xpacket end")
    start = found.start() if found else len(packet)
    stop = trailer if trailer > start else len(packet)
    end = start + len(packet[start:stop].rstrip(b" \t\r\n\x00"))
    builder = _builder_class()()
    try:
        parser = ET.XMLParser(target=builder)
        parser.feed(packet[start:end])
        root = parser.close()
    except (ET.ParseError, ValueError) as exc:
        return XmpOutcome(None, f"dropped: it does not parse as XML ({exc}), and it may state "
                                "the input page's size")
    rdf = root if root.tag == f"{{{RDF}}}RDF" else root.find(f".//{{{RDF}}}RDF")
    if rdf is None:
        return XmpOutcome(None, "dropped: it has no rdf:RDF (not XMP), and it may state the "
                                "input page's size")
    updated: list[str] = []
    removed: list[str] = []
    descriptions = rdf.findall(f"{{{RDF}}}Description")
    old = {key: value for desc in descriptions for key, value in _properties(desc)}
    new = _targets(old, reshape)
    for desc in descriptions:
        for key in list(desc.attrib):
            fate = _fate(key, desc.attrib[key], new, reshape.moved)
            if fate is _DROP:
                del desc.attrib[key]
                removed.append(_name(key))
            elif fate is not None:
                desc.attrib[key] = fate
                updated.append(_name(key))
        for child in list(desc):
            if not isinstance(child.tag, str):
                continue  # (a comment)
            target = new.get(child.tag)
            if isinstance(target, tuple) and (items := _items(child)) is not None:
                if [_number(item.text or "") for item in items] != list(map(Fraction, target)):
                    _refill(child[0], items, target)
                    updated.append(_name(child.tag))
                continue
            fate = _fate(child.tag, _plain(child), new, reshape.moved)
            if fate is _DROP:
                _remove(desc, child)
                removed.append(_name(child.tag))
            elif fate is not None:
                child.text = fate
                updated.append(_name(child.tag))
    stamped = _stamped(root, rdf, descriptions, derived, builder.declared) if derived else ""
    if not updated and not removed and not stamped:
        return XmpOutcome(packet, "kept as is (it states nothing the ops changed)")
    body = _serialized(root, builder.declared).encode("utf-8")
    pad = packet[end:stop]
    room = len(pad) + (end - start) - len(body)
    if pad and room >= 1:  # (the packet keeps its length)
        pad = (pad + b" " * room)[:room - 1] + pad[-1:]
    said = "; ".join([*(f"{what} {_listed(names)}" for what, names in
                        (("updated", updated), ("removed", removed)) if names),
                      *([stamped] if stamped else [])])
    return XmpOutcome(packet[:start] + body + pad + packet[stop:],
                      f"rewritten: {said}" if updated or removed else f"kept, {said}")


def _stamped(root: Any, rdf: Any, descriptions: list[Any], derived: Derivation,
             declared: dict[Any, list[tuple[str, str]]]) -> str:
    """The packet's ``rdf:RDF`` made the derivative's (module docstring), and what was
    done, in words. Its properties go where it has media management's (else in its first
    ``rdf:Description``, one added if it has none), declared there."""
    from xml.etree import ElementTree as ET

    if not descriptions:  # (an empty rdf:RDF)
        descriptions.append(ET.SubElement(rdf, f"{{{RDF}}}Description", {f"{{{RDF}}}about": ""}))
    instance, document, derived_from, history = (
        f"{{{XMP_MM}}}{name}" for name in ("InstanceID", "DocumentID", "DerivedFrom", "History"))
    home = next((desc for desc in descriptions if any(
        key.startswith(f"{{{XMP_MM}}}") for key, _ in _properties(desc))), descriptions[0])
    old = {key: value for desc in descriptions for key, value in _properties(desc)}
    events = None
    for desc in descriptions:  # (the input's InstanceID and DerivedFrom go; History stays)
        for key in (instance, derived_from):
            desc.attrib.pop(key, None)
        for child in list(desc):
            if child.tag in (instance, derived_from):
                _remove(desc, child)
            elif child.tag == history and events is None and len(child) == 1 \
                    and child[0].tag == f"{{{RDF}}}Seq":
                events = child[0]
    source = {f"{{{ST_REF}}}{name}": old[key] for name, key in
              (("instanceID", instance), ("documentID", document)) if old.get(key)}
    # (declared on ``home``, where a prefix is free, as Adobe's tools declare them)
    outer = dict(p for element in dict.fromkeys((root, rdf, home))
                 for p in declared.get(element, []))
    for uri in (XMP_MM, ST_EVT, *([ST_REF] if source else [])):
        if uri not in outer.values() and PREFIXES[uri] not in outer:
            declared.setdefault(home, []).append((PREFIXES[uri], uri))
    home.set(instance, derived.instance)
    if source:
        _append(home, ET.Element(derived_from, source))
    if events is None:  # (none, or not a Seq: a new one)
        for desc in descriptions:
            desc.attrib.pop(history, None)
            for child in desc.findall(history):
                _remove(desc, child)
        element = ET.Element(history)
        events = ET.SubElement(element, f"{{{RDF}}}Seq")
        _append(home, element)
    _append(events, ET.Element(f"{{{RDF}}}li", {
        f"{{{ST_EVT}}}{name}": value for name, value in (
            ("action", ACTION), ("instanceID", derived.instance), ("when", derived.when),
            ("softwareAgent", derived.agent), ("parameters", derived.parameters))}))
    return ("stamped a derivative: a new xmpMM:InstanceID, "
            + ("xmpMM:DerivedFrom the input's, " if source else "")
            + f"an xmpMM:History event ({ACTION})")


def _properties(desc: Any) -> list[tuple[str, str | None]]:
    """The top-level properties of an ``rdf:Description``: (``{uri}name``, its value, None
    when it is not a plain value)."""
    return [*desc.attrib.items(),
            *((child.tag, _plain(child)) for child in desc if isinstance(child.tag, str))]


def _plain(element: Any) -> str | None:
    """A property element's text, or None when it is a struct, an array or a resource."""
    if len(element) or any(key.startswith(f"{{{RDF}}}") for key in element.attrib):
        return None
    return (element.text or "").strip()


def _targets(old: dict[str, str | None], reshape: Reshape) -> dict[str, Any]:
    """What each property to make true becomes (its text, a tuple of the items of an
    ``rdf:Seq``, or :data:`_DROP`)."""
    new = _formed(reshape.form) if reshape.form else {}
    if not reshape.moved:
        return new
    new |= {
        f"{{{TIFF}}}ImageWidth": str(reshape.width), f"{{{TIFF}}}ImageLength": str(
            reshape.height),
        f"{{{EXIF}}}PixelXDimension": str(reshape.width),
        f"{{{EXIF}}}PixelYDimension": str(reshape.height)}
    for x, y, uri in RESOLUTIONS:
        kx, ky = f"{{{uri}}}{x}", f"{{{uri}}}{y}"
        if uri == TIFF and reshape.resolution is not None:
            new[kx], new[ky] = (_rational(v) for v in reshape.resolution)
            new[f"{{{TIFF}}}ResolutionUnit"] = str(reshape.unit)
            continue
        if reshape.transposed:  # (the output's x is the input's y)
            old = {**old, kx: old.get(ky), ky: old.get(kx)}
        for key, scale in ((kx, reshape.scale[0]), (ky, reshape.scale[1])):
            new[key] = _scaled(old.get(key), scale)
    if reshape.turned:
        new[f"{{{TIFF}}}Orientation"] = _DROP
    for uri, name in POSITIONS:
        new[f"{{{uri}}}{name}"] = _DROP
    return new


def _formed(form: Form) -> dict[str, Any]:
    """What each property stating how the samples are stored becomes (:class:`Form`)."""
    new: dict[str, Any] = {
        f"{{{TIFF}}}BitsPerSample": tuple(map(str, form.bits)),
        f"{{{TIFF}}}SamplesPerPixel": str(len(form.bits)),
        f"{{{TIFF}}}PhotometricInterpretation": str(form.photometric),
        f"{{{TIFF}}}Compression": str(form.compression),
        f"{{{TIFF}}}PlanarConfiguration": "1"}
    if not form.icc:  # (it names the profile embedded: none is)
        new[f"{{{PHOTOSHOP}}}ICCProfile"] = _DROP
    if form.recoloured:
        new[f"{{{PHOTOSHOP}}}ColorMode"] = _DROP if form.mode is None else str(form.mode)
        new[f"{{{EXIF}}}ColorSpace"] = _DROP
    return new


def _fate(key: str, value: str | None, new: dict[str, Any], moved: bool = True) -> Any:
    """A property's new text, :data:`_DROP`, or None (kept as it is)."""
    if moved and key.startswith(f"{{{CRS}}}"):
        return _DROP
    if key not in new:
        return None
    target = new[key]
    if isinstance(target, tuple):  # (an array written as one value: right for one sample)
        target = target[0] if len(target) == 1 else _DROP
    if target is _DROP or value is None:  # (a struct where a value was to be updated)
        return _DROP
    number = _number(value)  # (300 is 300/1: kept as it is)
    return None if target == value or number is not None and _number(target) == number \
        else target


def _scaled(value: str | None, scale: Fraction) -> Any:
    """A rational value (``300/1``, ``300``, ``72.5``) times ``scale``, as ``n/d``;
    :data:`_DROP` when there is none or it is no number."""
    if value is None or scale == 1:
        return _DROP if value is None else value
    number = _number(value)
    return _DROP if number is None else _fraction(number * scale)


def _number(value: str) -> Fraction | None:
    """An XMP rational or number (``300/1``, ``300``, ``72.5``); None if it is none."""
    try:
        return Fraction(value.strip())
    except (ValueError, ZeroDivisionError):
        return None


def _fraction(number: Fraction) -> str:
    return f"{number.numerator}/{number.denominator}"


def _rational(value: Any) -> str:
    """A resolution tag's value (``(n, d)``, or a float that does not fit) as XMP writes a
    rational (``n/d``)."""
    if isinstance(value, float):
        return _fraction(Fraction(value).limit_denominator(2**32 - 1))
    return f"{value[0]}/{value[1]}"


def _name(key: str) -> str:
    uri, _, local = key[1:].partition("}")
    return f"{PREFIXES.get(uri, uri)}:{local}"


def _listed(names: list[str]) -> str:
    """Names in order, once each; Camera Raw's as ``crs:* (N properties)``."""
    crs = [n for n in names if n.startswith("crs:")]
    listed = list(dict.fromkeys(n for n in names if not n.startswith("crs:")))
    if crs:
        listed.append(f"crs:* ({len(crs)} propert{'ies' if len(crs) > 1 else 'y'}: Camera "
                      "Raw's settings of the original)")
    return ", ".join(listed)


def _items(element: Any) -> list[Any] | None:
    """The items of a property that is an ``rdf:Seq`` of plain items (None: it is not)."""
    if len(element) != 1 or element[0].tag != f"{{{RDF}}}Seq" or element.attrib:
        return None
    items = [item for item in element[0] if isinstance(item.tag, str)]
    if not items or len(items) != len(element[0]) or any(
            item.tag != f"{{{RDF}}}li" or len(item) or item.attrib for item in items):
        return None
    return items


def _refill(seq: Any, items: list[Any], values: tuple[str, ...]) -> None:
    """``seq``'s items made ``values``, spaced as its items were."""
    from xml.etree import ElementTree as ET

    between = items[0].tail if len(items) > 1 else seq.text
    last = items[-1].tail
    for item in items:
        seq.remove(item)
    for k, value in enumerate(values):
        item = ET.SubElement(seq, f"{{{RDF}}}li")
        item.text, item.tail = value, last if k == len(values) - 1 else between


def _append(parent: Any, child: Any) -> None:
    """Put ``child`` last in ``parent``, spaced as its children are."""
    children = list(parent)
    if children:  # (the last one's tail is the parent's closing indent)
        child.tail = children[-1].tail
        children[-1].tail = children[-2].tail if len(children) > 1 else parent.text
    parent.append(child)


def _remove(parent: Any, child: Any) -> None:
    """Take ``child`` out, the whitespace around its siblings as it was."""
    children = list(parent)
    at = children.index(child)
    if at == len(children) - 1:  # (its tail is the parent's closing indent)
        if at:
            children[at - 1].tail = child.tail
        else:
            parent.text = child.tail
    parent.remove(child)


@functools.cache
def _builder_class() -> type:
    from xml.etree import ElementTree as ET

    class Builder(ET.TreeBuilder):
        """A tree, its comments, and where each namespace was declared."""

        def __init__(self) -> None:
            super().__init__(insert_comments=True, insert_pis=True)
            self.pending: list[tuple[str, str]] = []
            self.declared: dict[Any, list[tuple[str, str]]] = {}

        def start_ns(self, prefix: str, uri: str) -> None:
            self.pending.append((prefix, uri))

        def start(self, tag: Any, attrs: Any) -> Any:
            element = super().start(tag, attrs)
            if self.pending:
                self.declared[element] = self.pending
                self.pending = []
            return element

    return Builder


def _serialized(root: Any, declared: dict[Any, list[tuple[str, str]]]) -> str:
    """``root`` as XML, each element with the prefixes and declarations it had."""
    from xml.etree import ElementTree as ET

    out: list[str] = []

    def write(element: Any, outer: dict[str, str]) -> None:
        if element.tag is ET.Comment:
            out.append(f"<!--{element.text or ''}-->{_escaped(element.tail)}")
            return
        if element.tag is ET.ProcessingInstruction:
            out.append(f"<?{element.text or ''}?>{_escaped(element.tail)}")
            return
        mine = list(declared.get(element, []))
        scope = {**outer, **dict(mine)}

        def qname(key: str, attribute: bool) -> str:
            if not key.startswith("{"):
                return key
            uri, _, local = key[1:].partition("}")
            if uri == XML:
                return f"xml:{local}"
            prefix = next((p for p, u in reversed(scope.items())
                           if u == uri and (p or not attribute)), None)
            if prefix is None:  # (not declared where it is used: declared here)
                prefix = PREFIXES.get(uri) if PREFIXES.get(uri) not in scope else next(
                    f"ns{n}" for n in range(len(scope) + 1) if f"ns{n}" not in scope)
                scope[prefix] = uri
                mine.append((prefix, uri))
            return f"{prefix}:{local}" if prefix else local

        tag = qname(element.tag, False)
        attributes = [f'{qname(k, True)}="{_escaped(v, True)}"' for k, v in element.items()]
        namespaces = [f'xmlns{":" + p if p else ""}="{_escaped(u, True)}"' for p, u in mine]
        out.append("<" + " ".join([tag, *namespaces, *attributes]))
        if element.text or len(element):
            out.append(">" + _escaped(element.text))
            for child in element:
                write(child, scope)
            out.append(f"</{tag}>")
        else:
            out.append("/>")
        out.append(_escaped(element.tail))

    write(root, {})
    return "".join(out)


def _escaped(text: str | None, attribute: bool = False) -> str:
    text = (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        text = (text.replace('"', "&quot;").replace("\n", "&#xA;").replace("\r", "&#xD;")
                .replace("\t", "&#x9;"))
    return text
