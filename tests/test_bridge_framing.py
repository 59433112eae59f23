"""The incremental decoder: text and binary modes, auto-detection, resync, splits at
awkward boundaries, accounting of gaps/reboots, channel mapping, and a fuzz test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgernn.firmware_bridge import protocol as P
from edgernn.firmware_bridge.framing import (
    ChannelMismatch,
    Decoder,
    DeviceInfo,
    ModeDetected,
    Reboot,
    Samples,
    SeqReset,
)

NAMES = ["a", "b", "c"]


def feed_all(dec: Decoder, wire: bytes, step=None) -> list:
    """Feed `wire` in pieces: step=None whole, an int for fixed-size pieces, or a list of
    cut positions."""
    if step is None:
        return dec.feed(wire)
    cuts = list(range(0, len(wire), step)) if isinstance(step, int) else [0, *step]
    cuts.append(len(wire))
    events = []
    for lo, hi in zip(cuts, cuts[1:]):
        events += dec.feed(wire[lo:hi])
    return events


def samples_of(events) -> np.ndarray:
    rows = [e.values for e in events if isinstance(e, Samples)]
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.float32)


def binary_stream(n=20, spf=1, start=0, session=7, names=NAMES, seed=0) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n * spf, len(names))).astype(np.float32)
    values[::5] = 0.0  # zero bytes: COBS escapes in the middle of frames
    wire = P.encode_hello(session, 100.0, names, seq=start)
    for i in range(n):
        wire += P.encode_data(start + i * spf, 0, values[i * spf : (i + 1) * spf])
    return wire, values


# -- text mode ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        b"1,2,3\n",
        b"1 2 3\n",
        b"1\t2\t3\r\n",
        b"1, 2, 3\r\n",
        b"  1;2;3  \n",
        b"a:1,b:2,c:3\n",
        b"c:3 b:2 a:1 extra:9\n",  # by name, extra fields ignored
        b"1e0,2.0,+3\n",
    ],
)
def test_text_line_formats(line):
    dec = Decoder("text", NAMES)
    np.testing.assert_array_equal(samples_of(dec.feed(line)), [[1, 2, 3]])
    assert dec.counters.rejected == 0


@pytest.mark.parametrize(
    "line",
    [
        b"1,2\n",  # wrong count
        b"1,2,3,4\n",
        b"1,x,3\n",  # non-numeric
        b"1,nan,3\n",  # not finite
        b"\n",  # blank
        b"\r\n",
        b"a:1,b:2\n",  # a model channel missing
        b"a:1,a:2,b:2,c:3\n",  # a name twice
        b"1,b:2,3\n",  # mixed
        b"\xff\xfe\x01\n",  # binary junk
        b"temperature,humidity,pressure\n",  # a header line
    ],
)
def test_text_bad_lines_are_counted_and_skipped(line):
    dec = Decoder("text", NAMES)
    events = dec.feed(line + b"4,5,6\n")
    np.testing.assert_array_equal(samples_of(events), [[4, 5, 6]])
    # well-formed lines that do not fit the model's channels: rejected as "channels"
    reason = "channels" if line in (b"1,2\n", b"1,2,3,4\n", b"a:1,b:2\n") else "parse"
    assert dec.counters.rejected == 1 and dec.counters.rejected_by == {reason: 1}


def test_text_without_model_takes_width_from_first_line():
    dec = Decoder("text")
    out = samples_of(dec.feed(b"1 2\n3 4\n5 6 7\nx:1,y:2\n"))
    np.testing.assert_array_equal(out, [[1, 2], [3, 4], [1, 2]])
    assert dec.counters.rejected == 1


def test_text_overlong_line_is_one_reject():
    dec = Decoder("text", NAMES)
    events = dec.feed(b"9" * 10000) + dec.feed(b"9" * 10000 + b"\n1,2,3\n")
    np.testing.assert_array_equal(samples_of(events), [[1, 2, 3]])
    assert dec.counters.rejected_by == {"overlong": 1}


def test_text_seq_counts_good_lines():
    dec = Decoder("text", NAMES)
    events = dec.feed(b"1,2,3\nbad\n4,5,6\n") + dec.feed(b"7,8,9\n")
    seqs = [e.seq for e in events if isinstance(e, Samples)]
    assert seqs == [0, 2]


# -- binary mode ----------------------------------------------------------------------
def test_binary_maps_channels_by_name():
    wire = P.encode_hello(1, 50.0, ["c", "extra", "a", "b"]) + P.encode_data(0, 0, [[3, 9, 1, 2]])
    dec = Decoder("binary", NAMES)
    events = dec.feed(wire)
    assert [type(e) for e in events] == [DeviceInfo, Samples]
    assert events[0].mapping.startswith("by name")
    np.testing.assert_array_equal(samples_of(events), [[1, 2, 3]])
    assert events[1].period_us == pytest.approx(20000.0)


def test_binary_maps_by_position_when_names_differ_but_count_matches():
    wire = P.encode_hello(1, 50.0, ["x", "y", "z"]) + P.encode_data(0, 0, [[1, 2, 3]])
    events = Decoder("binary", NAMES).feed(wire)
    assert events[0].mapping == "by position"
    np.testing.assert_array_equal(samples_of(events), [[1, 2, 3]])


def test_binary_channel_mismatch_is_reported():
    wire = P.encode_hello(1, 50.0, ["x", "y"]) + P.encode_data(0, 0, [[1, 2]])
    dec = Decoder("binary", NAMES)
    events = dec.feed(wire)
    mismatch = [e for e in events if isinstance(e, ChannelMismatch)]
    assert mismatch and "2 channels (x, y)" in mismatch[0].message
    assert dec.counters.unmapped == 1 and dec.counters.samples == 0


def test_frames_before_hello_with_other_width_wait_for_it():
    wire = P.encode_data(0, 0, [[1, 2, 3, 4]]) + P.encode_hello(1, 50.0, ["b", "a", "d", "c"])
    wire += P.encode_data(1, 0, [[1, 2, 3, 4]])
    dec = Decoder("binary", NAMES)
    out = samples_of(dec.feed(wire))
    np.testing.assert_array_equal(out, [[2, 1, 4]])
    assert dec.counters.unmapped == 1


def test_gaps_are_counted_and_carried_on_the_next_samples():
    frames = [P.encode_data(s, 0, [[s, s, s]]) for s in (10, 11, 14, 15, 20)]
    dec = Decoder("binary", NAMES)
    events = [e for e in dec.feed(b"".join(frames)) if isinstance(e, Samples)]
    assert [(e.seq, e.gap) for e in events] == [(10, 0), (11, 0), (14, 2), (15, 0), (20, 4)]
    assert dec.counters.missing == 6


def test_hello_sets_the_expected_seq():
    wire = P.encode_hello(1, 50.0, NAMES, seq=100) + P.encode_data(103, 0, [[1, 2, 3]])
    dec = Decoder("binary", NAMES)
    dec.feed(wire)
    assert dec.counters.missing == 3


def test_seq_wraps_around_u32_without_a_gap():
    wire = b"".join(P.encode_data(s & P.U32, 0, [[1, 2, 3]]) for s in range(2**32 - 2, 2**32 + 2))
    dec = Decoder("binary", NAMES)
    events = dec.feed(wire)
    assert dec.counters.missing == 0 and dec.counters.seq_resets == 0
    assert [e.seq for e in events if isinstance(e, Samples)] == [2**32 - 2, 2**32 - 1, 0, 1]


def test_reboot_resets_and_counts_device_drops_per_session():
    wire = P.encode_hello(1, 50.0, NAMES, dropped=0) + P.encode_data(0, 0, [[1, 2, 3]])
    wire += P.encode_hello(1, 50.0, NAMES, dropped=5, seq=8) + P.encode_data(8, 0, [[1, 2, 3]])
    wire += P.encode_hello(2, 50.0, NAMES, dropped=0, seq=0) + P.encode_data(1, 0, [[1, 2, 3]])
    wire += P.encode_hello(2, 50.0, NAMES, dropped=3, seq=2)
    dec = Decoder("binary", NAMES)
    events = dec.feed(wire)
    assert [type(e) for e in events if not isinstance(e, Samples)] == [
        DeviceInfo, Reboot, DeviceInfo,
    ]  # fmt: skip
    c = dec.counters
    assert (c.reboots, c.missing, c.device_dropped) == (1, 7 + 1, 5 + 3)


def test_backward_seq_without_hello_is_a_reset_and_the_late_hello_no_second_one():
    wire = P.encode_hello(1, 50.0, NAMES) + P.encode_data(0, 0, [[1, 2, 3]])
    wire += P.encode_data(500, 0, [[1, 2, 3]]) + P.encode_data(0, 0, [[1, 2, 3]])
    wire += P.encode_hello(2, 50.0, NAMES, seq=1) + P.encode_data(1, 0, [[1, 2, 3]])
    dec = Decoder("binary", NAMES)
    kinds = [type(e) for e in dec.feed(wire) if not isinstance(e, Samples)]
    assert kinds == [DeviceInfo, SeqReset, DeviceInfo]
    assert dec.counters.seq_resets == 1 and dec.counters.reboots == 1


def test_unknown_frame_types_are_ignored_and_counted():
    body = bytes([1, 9, 1, 0]) + bytes(8)
    wire = P.cobs_encode(body + P.crc16(body).to_bytes(2, "little")) + b"\x00"
    dec = Decoder("binary", NAMES)
    assert samples_of(dec.feed(wire + P.encode_data(0, 0, [[1, 2, 3]]))).shape == (1, 3)
    assert dec.counters.ignored == 1 and dec.counters.rejected == 0


# -- resync and awkward splits --------------------------------------------------------
def test_garbage_between_frames_costs_only_itself():
    wire, values = binary_stream(10)
    frames = wire.split(b"\x00")
    junk = b"\x13\x37garbage\xff\x00"
    noisy = b"\x00".join(frames[:4]) + b"\x00" + junk + b"\x00".join(frames[4:])
    dec = Decoder("binary", NAMES)
    np.testing.assert_array_equal(samples_of(dec.feed(noisy)), values)
    assert dec.counters.rejected == 1 and dec.counters.missing == 0


def test_garbage_glued_to_a_frame_loses_that_frame_only():
    wire, values = binary_stream(10)
    frames = wire.split(b"\x00")
    noisy = b"\x00".join(frames[:4]) + b"\x00" + b"\x42\x42" + b"\x00".join(frames[4:])
    dec = Decoder("binary", NAMES)
    out = samples_of(dec.feed(noisy))
    np.testing.assert_array_equal(out, np.delete(values, 3, axis=0))  # frames[0] is the hello
    assert dec.counters.rejected == 1 and dec.counters.missing == 1


def test_overlong_run_without_delimiter_is_dropped_and_decoding_resumes():
    wire, values = binary_stream(5)
    dec = Decoder("binary", NAMES)
    events = dec.feed(b"\x01" * (P.MAX_ENCODED + 10)) + dec.feed(b"\x01" * 100 + b"\x00" + wire)
    np.testing.assert_array_equal(samples_of(events), values)
    assert dec.counters.rejected_by == {"overlong": 1}


@pytest.mark.parametrize("spf", [1, 4])
def test_every_split_point_decodes_the_same(spf):
    wire, values = binary_stream(6, spf=spf)
    wire = b"\x17junk\x00" + wire
    whole = Decoder("auto", NAMES)
    ref = samples_of(feed_all(whole, wire))
    np.testing.assert_array_equal(ref, values)
    for cut in range(1, len(wire)):
        dec = Decoder("auto", NAMES)
        np.testing.assert_array_equal(samples_of(feed_all(dec, wire, [cut])), values)
        assert dec.counters.snapshot() == whole.counters.snapshot()
    for step in (1, 2, 3, 7, 13):
        dec = Decoder("auto", NAMES)
        np.testing.assert_array_equal(samples_of(feed_all(dec, wire, step)), values)
        assert dec.counters.snapshot() == whole.counters.snapshot()


def test_every_split_point_decodes_the_same_in_text():
    wire = b"junk\r\n1,2,3\r\na:4 b:5 c:6\r\n\r\n7\t8\t9\r\n10,11,12\n"
    want = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    for cut in range(1, len(wire)):
        for mode in ("auto", "text"):
            dec = Decoder(mode, NAMES)
            np.testing.assert_array_equal(samples_of(feed_all(dec, wire, [cut])), want)
            assert dec.counters.rejected == 2
    dec = Decoder("auto", NAMES)
    np.testing.assert_array_equal(samples_of(feed_all(dec, wire, 1)), want)


# -- auto-detection -------------------------------------------------------------------
def test_auto_detects_binary_and_replays_what_came_before():
    wire, values = binary_stream(3)
    dec = Decoder("auto", NAMES)
    events = dec.feed(b"boot noise\r\n" + wire)
    assert events[0] == ModeDetected("binary")
    np.testing.assert_array_equal(samples_of(events), values)
    assert dec.counters.rejected == 1  # the boot noise, as one chunk


def test_auto_detects_text_after_two_good_lines():
    dec = Decoder("auto", NAMES)
    assert dec.feed(b"1,2,3\n") == []
    events = dec.feed(b"4,5,6\n")
    assert events[0] == ModeDetected("text")
    np.testing.assert_array_equal(samples_of(events), [[1, 2, 3], [4, 5, 6]])


def test_auto_mode_redetects_after_a_run_of_rejects():
    dec = Decoder("auto", NAMES)
    dec.feed(b"1,2,3\n4,5,6\n")
    wire, values = binary_stream(3)
    junk = b"".join(b"not a sample %d\n" % i for i in range(70))
    events = dec.feed(junk) + dec.feed(wire)
    assert ModeDetected("binary") in events
    np.testing.assert_array_equal(samples_of(events), values)


def test_new_link_drops_the_partial_frame_and_keeps_the_sequence():
    wire, values = binary_stream(4)
    frames = wire.split(b"\x00")
    dec = Decoder("auto", NAMES)
    dec.feed(b"\x00".join(frames[:3]) + b"\x00" + frames[3][:5])  # cut mid-frame
    dec.new_link()
    events = dec.feed(b"\x00".join(frames[4:]))
    assert events[0] == ModeDetected("binary")
    assert dec.counters.missing == 1 and dec.counters.rejected == 0


# -- fuzz -----------------------------------------------------------------------------
_frames = st.one_of(
    st.builds(
        lambda seq, vals: P.encode_data(seq, 0, np.array(vals, np.float32).reshape(-1, 3)),
        st.integers(0, 2**32 - 1),
        st.lists(st.floats(width=32), min_size=3, max_size=12).filter(lambda v: len(v) % 3 == 0),
    ),
    st.builds(
        lambda s, names: P.encode_hello(s, 10.0, names),
        st.integers(0, 2**32 - 1),
        st.lists(st.text(max_size=5), min_size=1, max_size=4),
    ),
    st.binary(max_size=40),
    st.just(b"1,2,3\n"),
    st.just(b"a:1 b:2 c:x\r\n"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_frames, max_size=12),
    st.lists(st.integers(0, 400), max_size=6),
    st.sampled_from(["auto", "text", "binary"]),
    st.sampled_from([NAMES, None]),
)
def test_decoder_never_raises(pieces, cuts, mode, channels):
    wire = b"".join(pieces)
    dec = Decoder(mode, channels)
    events = feed_all(dec, wire, sorted({c for c in cuts if c < len(wire)} - {0}))
    c = dec.counters
    assert c.bytes == len(wire)
    assert c.samples == sum(len(e.values) for e in events if isinstance(e, Samples))
    for e in events:
        if isinstance(e, Samples):
            assert e.values.dtype == np.float32 and e.values.ndim == 2
