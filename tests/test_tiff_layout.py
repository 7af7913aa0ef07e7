"""The pure layout of a composed output: pieces, coalescing, and S3 multipart parts; and the
recorder that takes tifffile's header and IFDs with placeholder tiles."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import tifffile

from pipeline.adapters.tiff_header import (
    LayoutRecorder,
    Placeholder,
    ifds_before_data,
    image_ifds,
)
from pipeline.core.tiff_layout import (
    MAX_PART,
    MIN_PART,
    Literal,
    MiB,
    Span,
    coalesce,
    plan_parts,
)
from pipeline.errors import OutputTooLargeError


def _bytes_of(pieces, sources):
    return b"".join(p.data if isinstance(p, Literal)
                    else sources[p.source][p.start:p.start + p.size] for p in pieces)


def _check_parts(parts, total):
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert sum(p.size for p in parts) == total
    for p in parts[:-1]:
        assert p.size >= MIN_PART, p
    for p in parts:
        assert p.size <= MAX_PART
        if p.copy:  # a copy is one range of one segment
            (span,) = p.pieces
            assert isinstance(span, Span)
        else:  # what goes through the function: the literals plus under 2 x MIN_PART
            assert sum(s.size for s in p.pieces if isinstance(s, Span)) < 2 * MIN_PART or \
                all(isinstance(s, Span) for s in p.pieces)


def test_coalesce_joins_neighbours_only():
    pieces = [Literal(b"ab"), Literal(b"c"), Span("s", 0, 5), Span("s", 5, 3), Span("t", 8, 1),
              Span("s", 9, 2), Literal(b""), Span("s", 11, 1)]
    assert list(coalesce(pieces)) == [Literal(b"abc"), Span("s", 0, 8), Span("t", 8, 1),
                                      Span("s", 9, 3)]


@pytest.mark.parametrize("seed", range(6))
def test_parts_keep_the_bytes_and_s3s_rules(seed):
    """Random files of literals and spans (tiny to tens of MiB): the parts hold the same bytes
    in order, all but the last >= 5 MiB, copies are single spans."""
    rng = random.Random(seed)
    sources = {name: rng.randbytes(64 * MiB) for name in "ab"}
    pieces, pos = [], {"a": 0, "b": 0}
    for _ in range(rng.randint(1, 30)):
        if rng.random() < 0.3:
            pieces.append(Literal(rng.randbytes(rng.randint(1, 3000))))
        else:
            name = rng.choice("ab")
            size = rng.choice([rng.randint(1, 100_000), rng.randint(MiB, 12 * MiB)])
            size = min(size, 64 * MiB - pos[name])
            pieces.append(Span(name, pos[name], size))
            pos[name] += size
    total = sum(p.size for p in pieces)
    parts = list(plan_parts(pieces, copy_part=7 * MiB))
    _check_parts(parts, total)
    flat = [q for p in parts for q in p.pieces]
    assert _bytes_of(flat, sources) == _bytes_of(pieces, sources)
    # local segments (no server-side copy): every part is uploaded, none above 16 MiB
    local = list(plan_parts(pieces, copyable=False))
    _check_parts(local, total)
    assert not any(p.copy for p in local)
    assert max(p.size for p in local) <= 16 * MiB + 3000 * 30


def test_a_large_span_is_copied_in_several_parts_and_the_header_tops_up():
    parts = list(plan_parts([Literal(b"H" * 100), Span("s", 0, 40 * MiB), Literal(b"T")],
                            copy_part=10 * MiB))
    first = parts[0]
    assert not first.copy and first.size == MIN_PART  # header + the first bytes of data
    assert first.pieces == (Literal(b"H" * 100), Span("s", 0, MIN_PART - 100))
    assert all(p.copy for p in parts[1:-1]) and len(parts) == 6
    assert parts[-1].pieces == (Literal(b"T"),) and not parts[-1].copy


def test_short_rests_do_not_cascade():
    """Runs of 1.2 x MIN_PART after a header: the first run goes up whole with the header,
    every later run is copied (a rest under MIN_PART would cut every following run)."""
    run = int(1.2 * MIN_PART)
    pieces = [Literal(b"H" * 100)] + [Span(str(i), 0, run) for i in range(20)]
    parts = list(plan_parts(pieces))
    assert [p.copy for p in parts] == [False] + [True] * 19
    assert parts[0].pieces == (Literal(b"H" * 100), Span("0", 0, run))


def test_limits_are_named_errors():
    with pytest.raises(OutputTooLargeError, match="10000 multipart parts"):
        list(plan_parts([Span(str(i), 0, MIN_PART) for i in range(10_001)]))
    with pytest.raises(OutputTooLargeError, match="largest object"):
        list(plan_parts([Span(str(i), 0, 5 * 1024**3) for i in range(1025)], copy_part=MAX_PART))


def _write(fh, tiles, shape, **kw):
    with tifffile.TiffWriter(fh, bigtiff=kw.pop("bigtiff", False)) as tw:
        tw.write(tiles(), shape=shape, dtype="uint8", tile=(32, 32), compression="zlib",
                 metadata=None, **kw)
        tw.write(tiles(), shape=shape, dtype="uint8", tile=(32, 32), compression="zlib",
                 metadata=None, description="second page")


@pytest.mark.parametrize("bigtiff", [False, True])
def test_the_recorder_gives_tifffiles_bytes(bigtiff):
    """Writing placeholders over the recorder, then filling the spans in, is the file tifffile
    writes from the real tiles."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 40, (70, 100), np.uint8)
    encoded = [tifffile.TIFF.COMPRESSORS[8](np.ascontiguousarray(
        np.pad(img[y:y + 32, x:x + 32], ((0, 32 - img[y:y + 32].shape[0]),
                                         (0, 32 - img[:, x:x + 32].shape[1])))))
        for y in range(0, 70, 32) for x in range(0, 100, 32)]
    segment = b"".join(encoded)
    starts = np.cumsum([0] + [len(e) for e in encoded])
    real = io.BytesIO()
    _write(real, lambda: iter(encoded), img.shape, bigtiff=bigtiff)
    recorder = LayoutRecorder()
    spans = [Span("seg", int(s), len(e)) for s, e in zip(starts, encoded, strict=False)]
    _write(recorder, lambda: (Placeholder(s) for s in spans), img.shape, bigtiff=bigtiff)
    pieces = recorder.pieces()
    assert _bytes_of(pieces, {"seg": segment}) == real.getvalue()
    # the tiles of a page, contiguous in the segment, are one span
    assert sum(isinstance(p, Span) for p in pieces) == 2
    assert recorder.literal_bytes < 1000


@pytest.mark.parametrize("seed", range(6))
def test_the_recorder_keeps_every_write_in_any_order(seed):
    """Literal writes in any order (later ones patch earlier ones, touching ones join),
    placeholders between them, patches and replaced tile data: pieces() and read() give the
    bytes of a plain file that had the same writes, whatever their order."""
    rng = random.Random(seed)
    size = 4000
    model = bytearray(size)  # the plain file; tile bytes come from the segment "seg"
    segment = bytes(rng.randrange(256) for _ in range(size))
    recorder = LayoutRecorder()
    free = list(range(0, size, 50))  # 80 slots of 50 bytes: a literal or a placeholder each
    rng.shuffle(free)
    literal = []
    for at in free:
        n = rng.randrange(1, 51)
        recorder.seek(at)
        if rng.random() < 0.6:
            chunk = bytes(rng.randrange(256) for _ in range(n))
            recorder.write(chunk)
            model[at:at + n] = chunk
            literal.append((at, n))
        else:
            recorder.write(Placeholder(Span("seg", at, n)))
            model[at:at + n] = segment[at:at + n]
    for _ in range(30):  # patches inside what was written literally
        at, n = rng.choice(literal)
        start = at + rng.randrange(n)
        chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, at + n - start + 1)))
        recorder.patch(start, chunk)
        model[start:start + len(chunk)] = chunk
        assert recorder.read(start, len(chunk)) == chunk
    recorder.seek(size)
    recorder.write(b"end")
    model += b"end"
    assert _bytes_of(recorder.pieces(), {"seg": segment}) == bytes(model)
    # tile data replaced by the same bytes from elsewhere in another segment
    spans = [p for p in recorder._spans if p[1].size > 10]
    if spans:
        pos, span = rng.choice(spans)
        half = span.size // 2
        recorder.replace_data(pos, span.size, [Span("other", 0, half),
                                               Span("other", half, span.size - half)])
        other = segment[span.start:span.start + span.size]
        assert _bytes_of(recorder.pieces(), {"seg": segment, "other": other}) == bytes(model)


def test_an_empty_segment_in_replaced_data_is_no_piece():
    """A page laid out segment after segment whose last segment is empty (a unit that made
    no tile of a pyramid level, as on a 66000 x 66000 page): its span of 0 bytes sat where
    the next literal starts, and composing the file failed ("tifffile wrote over tile data";
    the job FAILED)."""
    recorder = LayoutRecorder()
    recorder.write(b"head")
    recorder.write(Placeholder(Span("seg", 0, 6)))
    recorder.write(b"tail")
    recorder.replace_data(4, 6, [Span("a", 0, 2), Span("b", 0, 4), Span("empty", 0, 0)])
    segments = {"seg": b"012345", "a": b"01", "b": b"2345", "empty": b""}
    assert _bytes_of(recorder.pieces(), segments) == b"head012345tail"
    assert all(not isinstance(p, Span) or p.size for p in recorder.pieces())


@pytest.mark.parametrize("bigtiff", [False, True])
def test_a_1bit_pages_placeholder_becomes_its_bits_per_sample_in_place(bigtiff):
    """tifffile writes no BitsPerSample on a 1-bit page (and takes none among extratags):
    the placeholder entry it writes instead (``ONE_BIT_EXTRATAG``: after the private tags)
    becomes BitsPerSample 1, SHORT, count 1, the entries sorted by code again; every other
    tag and tile byte is what tifffile writes without the placeholder, classic and BigTIFF,
    a TileOffsets held in its entry (a page of one tile) moved with it, the 8-bit page
    between untouched. An IFD without the placeholder is refused."""
    from conftest import one_bit_pages_state_their_bits, tiff_pages

    from pipeline.adapters.tiff_header import (
        ONE_BIT_EXTRATAG,
        image_ifds,
        state_bits_per_sample,
    )

    bits = np.random.default_rng(5).random((20, 40)) < 0.5

    def write(fh, extratags):
        with tifffile.TiffWriter(fh, bigtiff=bigtiff) as tw:
            tw.write(bits, tile=(16, 16), compression="zlib", photometric="miniswhite",
                     metadata=None, extratags=[(42113, "s", 0, "0", True), *extratags])
            tw.write(np.arange(100, dtype=np.uint8).reshape(10, 10), compression="zlib",
                     metadata=None)
            tw.write(bits[:16, :16], tile=(16, 16), photometric=4, metadata=None,
                     extratags=extratags)

    plain = io.BytesIO()
    write(plain, [])
    recorder = LayoutRecorder()
    write(recorder, [ONE_BIT_EXTRATAG])
    (first,), (eight,), (last,) = image_ifds(recorder)
    with pytest.raises(ValueError, match=f"the IFD at {eight} is no 1-bit page"):
        state_bits_per_sample(recorder, eight)
    state_bits_per_sample(recorder, first)
    state_bits_per_sample(recorder, last)
    stated = io.BytesIO(b"".join(p.data for p in recorder.pieces()))
    new, old = tiff_pages(stated), tiff_pages(plain)
    assert [bits for bits, _, _ in new] == [1, 8, 1]
    for k, ((n, tags, tiles), (_, tags_before, tiles_before)) in enumerate(
            zip(new, old, strict=True)):
        assert tiles == tiles_before
        if n == 1:
            assert tags.pop(258) == (3, 1, 1) and 258 not in tags_before, k
        assert tags == tags_before, k
    assert one_bit_pages_state_their_bits(stated) == 2
    stated.seek(0)
    with tifffile.TiffFile(stated) as tf:
        np.testing.assert_array_equal(tf.pages[0].asarray(), bits)
        np.testing.assert_array_equal(tf.pages[2].asarray(), bits[:16, :16])


@pytest.mark.parametrize("bigtiff", [False, True])
def test_ifds_before_data_moves_regions_and_every_offset_into_them(bigtiff):
    """A file of three pages (a strip page among them, tag values out of line: a
    description, a resolution) recorded with placeholder tiles, laid out IFDs first and the
    pages' data in the order asked: tifffile reads every page, tag and pixel back, the IFDs
    at the start and each page's tiles where asked (the last page's first)."""
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 9, (70, 100), np.uint8), rng.integers(0, 9, (35, 50), np.uint8),
              rng.integers(0, 9, (18, 25), np.uint8)]
    segment, spans = b"", []
    for n, img in enumerate(images):
        if n == 1:  # one strip
            blocks = [tifffile.TIFF.COMPRESSORS[8](img.tobytes())]
        else:
            blocks = [tifffile.TIFF.COMPRESSORS[8](np.ascontiguousarray(np.pad(
                img[y:y + 32, x:x + 32], ((0, 32 - img[y:y + 32].shape[0]),
                                          (0, 32 - img[:, x:x + 32].shape[1])))))
                for y in range(0, img.shape[0], 32) for x in range(0, img.shape[1], 32)]
        spans.append([Span("seg", len(segment) + sum(map(len, blocks[:k])), len(b))
                      for k, b in enumerate(blocks)])
        segment += b"".join(blocks)
    recorder = LayoutRecorder()
    with tifffile.TiffWriter(recorder, bigtiff=bigtiff) as tw:
        for n, img in enumerate(images):
            layout = {"rowsperstrip": img.shape[0]} if n == 1 else {"tile": (32, 32)}
            tw.write((Placeholder(s) for s in spans[n]), shape=img.shape, dtype=np.uint8,
                     compression="zlib", description=f"page {n} " * 20, metadata=None,
                     resolution=((300, 1), (300, 1)), **layout)
    ifds = image_ifds(recorder)
    out = io.BytesIO(_bytes_of(ifds_before_data(recorder, [i[0] for i in ifds[::-1]]),
                               {"seg": segment}))
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) == 3
        assert tf.pages[0].offset == (16 if bigtiff else 8)
        assert max(p.offset for p in tf.pages) < min(p.dataoffsets[0] for p in tf.pages)
        assert tf.pages[2].dataoffsets[0] < tf.pages[1].dataoffsets[0] \
            < tf.pages[0].dataoffsets[0]
        for n, (page, img) in enumerate(zip(tf.pages, images, strict=True)):
            np.testing.assert_array_equal(page.asarray(), img)
            assert page.description == (f"page {n} " * 20).strip()
            assert page.tags["XResolution"].value == (300, 1)


def test_ifds_before_data_refuses_an_ifd_that_points_at_others():
    """SubIFDs (offsets of IFDs that move too) are no COG layout: refused by name."""
    recorder = LayoutRecorder()
    with tifffile.TiffWriter(recorder) as tw:
        tw.write((Placeholder(Span("s", 0, 10)) for _ in range(1)), shape=(16, 16),
                 dtype=np.uint8, tile=(16, 16), subifds=1, metadata=None, compression="zlib")
        tw.write((Placeholder(Span("s", 10, 10)) for _ in range(1)), shape=(8, 8),
                 dtype=np.uint8, tile=(16, 16), subfiletype=1, metadata=None,
                 compression="zlib")
    with pytest.raises(ValueError, match="the IFD at 8 points at other IFDs"):
        ifds_before_data(recorder, [8])


def test_image_ifds_groups_the_chain_into_each_pages_ifds():
    """``sizes`` groups the main chain's IFDs (each with its SubIFDs) into the output pages
    that wrote them, in file order: a page with two SubIFD levels and its mask after them,
    a plain page, a page with a level as a page of the chain after it, over many pages."""
    img = np.zeros((64, 64), np.uint8)
    recorder = LayoutRecorder()
    sizes = []
    with tifffile.TiffWriter(recorder) as tw:
        for _ in range(40):  # (enough pages that the grouping's walk is across many)
            tw.write(img, tile=(16, 16), subifds=2, metadata=None)
            tw.write(img[::2, ::2], tile=(16, 16), subfiletype=1, metadata=None)
            tw.write(img[::4, ::4], tile=(16, 16), subfiletype=1, metadata=None)
            tw.write(img, tile=(16, 16), metadata=None)  # its mask (marks tell nothing)
            tw.write(img, tile=(16, 16), metadata=None)
            tw.write(img, tile=(16, 16), metadata=None)
            tw.write(img[::2, ::2], tile=(16, 16), subfiletype=1, metadata=None)
            sizes += [4, 1, 2]
    with tifffile.TiffFile(io.BytesIO(b"".join(p.data for p in recorder.pieces()))) as tf:
        chain = [[page.offset, *page.subifds] if page.subifds else [page.offset]
                 for page in tf.pages]
    expected = []
    for k in range(0, len(chain), 5):  # (a page and its mask; a page; a page and its level)
        expected += [chain[k] + chain[k + 1], chain[k + 2], chain[k + 3] + chain[k + 4]]
    assert len(chain) == 200 and len(chain[0]) == 3
    assert image_ifds(recorder, sizes) == expected
