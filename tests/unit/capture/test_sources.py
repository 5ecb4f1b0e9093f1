"""Readers keep every record: bad ones come out with a parse error, never dropped."""

import gzip
import json
from pathlib import Path

import pytest

from leadflow.capture import sources

from helpers import write


def read_all(path: Path, **kw):
    chunks = list(sources.read_csv_chunks(str(path), **kw))
    frames = [c.records for c in chunks]
    import pandas as pd

    return chunks, pd.concat(frames, ignore_index=True) if frames else None


def test_bom_crlf_and_quoted_newlines(tmp_path):
    path = write(
        tmp_path / "a.csv",
        b'\xef\xbb\xbfemail,note\r\na@x.com,"line one\r\nline two"\r\nb@x.com,plain\r\n',
    )
    chunks, records = read_all(path)
    assert chunks[0].columns == ["email", "note"]
    assert records["email"].tolist() == ["a@x.com", "b@x.com"]
    assert records["note"][0] == "line one\r\nline two"
    assert records[sources.RECORD_NO].tolist() == [2, 4]
    assert records[sources.PARSE_ERROR].isna().all()


def test_wrong_field_count_is_kept_with_an_error(tmp_path):
    path = write(tmp_path / "a.csv", "email,name\na@x.com,A\nshort\nb@x.com,B,extra\nc@x.com,C\n")
    _, records = read_all(path)
    assert records[sources.RECORD_NO].tolist() == [2, 3, 4, 5]
    errors = records[sources.PARSE_ERROR].tolist()
    assert errors[0] is None and errors[3] is None
    assert errors[1] == "1 fields where the header has 2"
    assert errors[2] == "3 fields where the header has 2"
    assert records[sources.RAW][2] == "b@x.com,B,extra"


def test_unbalanced_quote_quarantines_one_line_and_reads_the_rest(tmp_path):
    lines = ["email,name", 'a@x.com,"A'] + [f"u{i}@x.com,U{i}" for i in range(5)]
    path = write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    _, records = read_all(path)
    assert len(records) == 6
    assert records[sources.PARSE_ERROR][0].startswith("unbalanced quote")
    assert records["email"][1:].tolist() == [f"u{i}@x.com" for i in range(5)]


def test_unterminated_quote_does_not_swallow_a_long_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_RECORD_LINES", 10)
    lines = ["email,name", 'a@x.com,"A'] + [f"u{i}@x.com,U{i}" for i in range(50)]
    path = write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    _, records = read_all(path)
    assert len(records) == 51
    assert records[sources.PARSE_ERROR].notna().sum() == 1


def test_non_utf8_bytes_and_nul_are_flagged_and_stored_printably(tmp_path):
    path = write(tmp_path / "a.csv", b"email,name\na@x.com,Jos\xe9\nb@x.com,B\x00ob\nc@x.com,C\n")
    _, records = read_all(path)
    errors = records[sources.PARSE_ERROR].tolist()
    assert errors[0] == "bytes that are not valid utf-8"
    assert errors[1] == "NUL byte in the record"
    assert errors[2] is None
    assert records[sources.RAW][0] == "a@x.com,Jos\\xe9"
    assert records[sources.RAW][1] == "b@x.com,B\\x00ob"


def test_latin1_file_reads_cleanly_when_the_mapping_says_so(tmp_path):
    path = write(tmp_path / "a.csv", "email,name\na@x.com,José\n".encode("latin-1"))
    _, records = read_all(path, encoding="latin-1")
    assert records["name"][0] == "José" and records[sources.PARSE_ERROR].isna().all()


def test_empty_file_and_header_only(tmp_path):
    chunks, _ = read_all(write(tmp_path / "empty.csv", ""))
    assert chunks == []
    chunks, records = read_all(write(tmp_path / "header.csv", "email,name\n"))
    assert len(chunks) == 1 and len(records) == 0


def test_one_megabyte_field(tmp_path):
    big = "x" * (1 << 20)
    path = write(tmp_path / "a.csv", f'email,note\na@x.com,"{big}"\n')
    _, records = read_all(path)
    assert len(records["note"][0]) == 1 << 20


def test_chunks_are_bounded(tmp_path):
    path = write(tmp_path / "a.csv", "email\n" + "".join(f"u{i}@x.com\n" for i in range(25)))
    chunks, _records = read_all(path, chunk_size=10)
    assert [len(c.records) for c in chunks] == [10, 10, 5]
    assert [c.chunk_no for c in chunks] == [1, 2, 3]


def test_duplicate_header_is_an_input_error(tmp_path):
    path = write(tmp_path / "a.csv", "email,email\na,b\n")
    with pytest.raises(sources.InputError, match="'email' appears more than once"):
        sources.read_header(str(path))


def test_missing_columns_error_names_them(tmp_path):
    with pytest.raises(
        sources.MissingColumnsError, match=r"'email' missing; the header has: name, phone"
    ):
        sources.check_columns("a.csv", ["name", "phone"], ("email",))


def test_jsonl_bad_lines_kept_with_errors(tmp_path):
    path = write(
        tmp_path / "a.jsonl",
        '{"email": "a@x.com", "n": 1}\nnot json\n[1, 2]\n\n{"email": {"nested": true}}\n',
    )
    chunks = list(sources.read_jsonl_chunks(str(path)))
    records = chunks[0].records
    assert records[sources.RECORD_NO].tolist() == [1, 2, 3, 5]
    errors = records[sources.PARSE_ERROR].tolist()
    assert errors[0] is None and errors[3] is None
    assert errors[1].startswith("invalid JSON") and errors[2] == "a JSON list, not an object"
    assert records["email"][3] == {"nested": True}


def test_folder_listing_and_compressed_files(tmp_path):
    write(tmp_path / "in" / "b.csv", "email\nb@x.com\n")
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(
        gzip.compress(json.dumps({"email": "a@x.com"}).encode() + b"\n")
    )
    write(tmp_path / "in" / "notes.md", "ignore me")
    found = sources.list_inputs(str(tmp_path / "in"))
    assert [Path(p).name for p in found] == ["a.jsonl.gz", "b.csv"]
    chunks = list(
        sources.read_chunks(
            found[0], file_format="auto", encoding="utf-8", delimiter=",", chunk_size=10
        )
    )
    assert chunks[0].records["email"].tolist() == ["a@x.com"]


def test_retry_after_parsing():
    from leadflow import http

    assert http.retry_after_seconds("3") == 3.0
    assert http.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert http.retry_after_seconds("soon") is None
    assert http.backoff_delay(0, 1.0, 60.0, retry_after=5.0) == 5.0
    assert 2.0 <= http.backoff_delay(2, 1.0, 60.0, retry_after=None) <= 4.0


def test_fast_and_careful_readers_agree(tmp_path, monkeypatch):
    rows = [
        "email,name,note",
        'a@x.com,"Smith, Ann","said ""hi"""',
        "b@x.com,Zoë,",
        'c@x.com,ab"c,plain',
        "",
        'd@x.com,"",x',
        "short",
        "e@x.com,E,🚀",
        "f@x.com,F,G,extra",
    ]
    path = write(tmp_path / "a.csv", "\r\n".join(rows) + "\r\n")
    fast_chunks, fast = read_all(path)
    monkeypatch.setattr(sources, "_plain_block", lambda texts: False)
    careful_chunks, careful = read_all(path)
    import pandas as pd

    pd.testing.assert_frame_equal(fast, careful)
    assert fast[sources.RECORD_NO].tolist() == [2, 3, 4, 6, 7, 8, 9]
    assert fast["name"].tolist()[:3] == ["Smith, Ann", "Zoë", 'ab"c']
    assert fast["note"][0] == 'said "hi"'
    # The chunk keeps the text exactly as received (after the header).
    assert fast_chunks[0].text == careful_chunks[0].text == "\r\n".join(rows[1:]) + "\r\n"
