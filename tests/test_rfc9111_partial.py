"""RFC 9111 §3.3-§3.4 partial content: which 206 responses are stored, which Range requests a piece
answers, and when pieces combine into a complete response (RFC 9110 §14.4 Content-Range)."""

from accel.cache.partial import (
    Piece,
    complete_cover,
    covered_range,
    parse_content_range,
    piece_key,
    split_piece_key,
    storable_piece,
    strong_validator,
)
from accel.cache.vary import secondary_key

FRESH = (("cache-control", "max-age=60"),)


def test_rfc9110_s14_4_content_range_with_a_known_length():
    assert parse_content_range("bytes 0-99/1000") == Piece(0, 99, 1000)
    assert parse_content_range(" BYTES 10-10/11 ") == Piece(10, 10, 11)
    for bad in [None, "", "bytes 0-99/*", "bytes */1000", "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes 0-1/2, 3-4/5"]:
        assert parse_content_range(bad) is None, bad


def test_s3_3_only_a_storable_single_range_206_is_a_piece():
    assert storable_piece(206, (), FRESH + (("content-range", "bytes 0-9/20"),)) == Piece(0, 9, 20)
    assert storable_piece(200, (), FRESH + (("content-range", "bytes 0-9/20"),)) is None
    assert storable_piece(206, (), FRESH + (("content-type", "multipart/byteranges; boundary=x"),)) is None
    assert storable_piece(206, (), FRESH + (("content-range", "bytes 0-9/*"),)) is None
    assert storable_piece(206, (), (("cache-control", "no-store, max-age=60"), ("content-range", "bytes 0-9/20"))) is None


def test_piece_keys_never_equal_a_requests_secondary_key_and_round_trip():
    plain = secondary_key((), ())
    stored = piece_key(Piece(0, 9, 20), plain)
    assert stored != plain
    assert split_piece_key(stored) == (Piece(0, 9, 20), plain)
    assert split_piece_key(plain) is None


def test_s3_4_a_piece_answers_the_single_ranges_it_covers():
    piece = Piece(100, 199, 1000)
    assert covered_range("bytes=100-199", piece) == (100, 199)
    assert covered_range("bytes=120-130", piece) == (120, 130)
    assert covered_range("bytes=150-", piece) is None  # runs past the piece
    assert covered_range("bytes=100-120, 150-160", piece) is None  # two ranges
    tail = Piece(900, 999, 1000)
    assert covered_range("bytes=-50", tail) == (950, 999)  # suffix, resolved against the known length
    assert covered_range("bytes=950-", tail) == (950, 999)
    assert covered_range("bytes=950-5000", tail) == (950, 999)
    assert covered_range(None, tail) is None


def test_s3_4_pieces_combine_only_with_one_strong_validator_covering_everything():
    a, b = Piece(0, 499, 1000), Piece(450, 999, 1000)
    assert complete_cover([(a, '"v"'), (b, '"v"')])
    assert complete_cover([(Piece(0, 499, 1000), '"v"'), (Piece(500, 999, 1000), '"v"')])  # adjacent
    assert not complete_cover([(a, '"v"'), (Piece(501, 999, 1000), '"v"')])  # a gap
    assert not complete_cover([(a, '"v"'), (b, '"w"')])
    assert not complete_cover([(a, None), (b, None)])
    assert not complete_cover([])
    assert strong_validator((("etag", 'W/"v"'),)) is None
    assert strong_validator((("etag", '"v"'),)) == '"v"'
