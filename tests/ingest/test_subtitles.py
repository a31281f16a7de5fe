"""Subtitle parsing as real files come: encodings, markup, SDH, bad cues."""

from __future__ import annotations

import pytest

from dubforge.ingest.subtitles import SubtitleError, clean_text, parse

SRT = """1
00:00:01,000 --> 00:00:02,500
<i>Hello there,</i>
- my friend.

2
00:00:03,000 --> 00:00:04,000
[door slams]

3
00:00:05,250 --> 00:00:07,000 X1:40 X2:600
{\\an8}Caf\u00e9 &amp; cr\u00e8me \u266a

4
00:00:09,000 --> 00:00:08,000
Backwards.

5
00:00:10,000 -> 00:00:11,000
Broken arrow.
"""


def test_srt_markup_sdh_and_bad_cues():
    subs = parse(SRT.encode("utf-8"))
    assert [(c.start, c.end, c.text) for c in subs.cues] == [
        (1.0, 2.5, "Hello there, my friend."),
        (5.25, 7.0, "Caf\u00e9 & cr\u00e8me"),
    ]
    assert [c.index for c in subs.cues] == [0, 2]
    assert subs.dropped == {"empty_text": 1, "end_before_start": 1}
    assert subs.encoding == "utf-8"


@pytest.mark.parametrize(
    "encoding, expected",
    [("utf-8-sig", "utf-8-sig"), ("utf-16", "utf-16"), ("cp1252", "cp1252")],
)
def test_encodings(encoding, expected):
    data = SRT.replace(" \u266a", "").encode(encoding)
    subs = parse(data.replace(b"\n", b"\r\n") if encoding == "cp1252" else data)
    assert subs.encoding == expected
    assert subs.cues[1].text == "Caf\u00e9 & cr\u00e8me"


def test_webvtt_with_header_notes_and_settings():
    vtt = (
        "WEBVTT - a film\n\nNOTE written by hand\n\nSTYLE\n::cue { color: red }\n\n"
        "intro\n00:01.000 --> 00:02.000 align:start position:10%\n<v Anna>Hi <c.yellow>you</c>\n\n"
        "01:00:00.500 --> 01:00:01.250\nLate line\n"
    )
    subs = parse(vtt.encode())
    assert [(c.start, c.end, c.text) for c in subs.cues] == [
        (1.0, 2.0, "Hi you"),
        (3600.5, 3601.25, "Late line"),
    ]


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "subtitles_empty"), (b"  \n\n", "subtitles_empty"),
     (b"just some text\nno timings\n", "subtitles_unusable"),
     (b"1\n00:00:01,000 --> 00:00:02,000\n[music]\n", "subtitles_unusable")],
)  # fmt: skip
def test_unusable_subtitles(data, reason):
    with pytest.raises(SubtitleError) as err:
        parse(data, "x.srt")
    assert err.value.reason == reason


def test_clean_text():
    assert clean_text(["<b>One</b>  two", "", "- three &lt;4&gt;"]) == "One two three <4>"
