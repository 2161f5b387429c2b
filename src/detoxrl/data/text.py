"""Text files read as text: in their encoding (UTF-8 by default, with or without a byte-order mark), and for a
file that is not in it, one line naming the file, the line and the byte where it stops being text, and the
fix. Knows nothing of records, fields or prompts."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from detoxrl.errors import DataError

UTF8 = "utf-8"


def codec(encoding: str) -> str:
    """The codec that reads ``encoding``: UTF-8 is read as ``utf-8-sig``, which drops a leading byte-order
    mark (what Notepad and Excel write) and is UTF-8 otherwise; any other name as it is."""
    return "utf-8-sig" if codecs.lookup(encoding).name == UTF8 else encoding


def first_bad_byte(
    data: bytes | Iterator[bytes], encoding: str
) -> tuple[int, int, UnicodeDecodeError] | None:
    """Where ``data`` (bytes, or its lines as bytes) stops decoding as ``encoding``: (line, byte offset from
    0, the error), or None where it all decodes. Lines are fed to one incremental decoder, so a character
    split across lines is still one character."""
    lines = iter(data.splitlines(keepends=True)) if isinstance(data, bytes) else data
    decoder = codecs.getincrementaldecoder(codec(encoding))("strict")
    offset, lineno = 0, 1
    for lineno, raw in enumerate(lines, start=1):
        pending = len(decoder.getstate()[0])  # bytes of an unfinished character from the line before
        try:
            decoder.decode(raw)
        except UnicodeDecodeError as e:
            return lineno, offset - pending + e.start, e
        offset += len(raw)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        return lineno, offset - len(e.object) + e.start, e
    return None


def not_text_line(name: str, where: tuple[int, int, UnicodeDecodeError], encoding: str) -> str:
    """'NAME, line L (byte B): byte 0xE9 is not UTF-8 (invalid continuation byte)', the first half of the
    one line a file that is not text gets."""
    lineno, offset, error = where
    bad = error.object[error.start : error.end][:4].hex(" ")
    what = "UTF-8" if codecs.lookup(encoding).name == UTF8 else encoding
    return f"{name}, line {lineno} (byte {offset}): byte 0x{bad} is not {what} ({error.reason})"


def not_text(path: Path, encoding: str, key: str | None = None) -> DataError:
    """The one line for a file that does not decode as ``encoding``: where, and the fix (re-encode it; or,
    where a config key names the encoding, set it)."""
    with path.open("rb") as f:
        where = first_bad_byte(iter(f), encoding)
    assert where is not None, f"{path} decodes as {encoding}, yet reading it as text failed"
    fix = f"re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8 '{path}' > fixed{path.suffix})"
    if key is not None:
        fix += f" or set {key} to its encoding (e.g. {key}=latin-1)"
    return DataError(f"{not_text_line(str(path), where, encoding)}: {fix}.")


@contextmanager
def reading(
    path: Path, encoding: str = UTF8, *, key: str | None = None, newline: str | None = None
) -> Iterator[TextIO]:
    """``path`` open as text in ``encoding`` (``codec``) for the block; a byte that does not decode, met
    anywhere in the block, becomes ``not_text``'s one line."""
    try:
        with path.open(encoding=codec(encoding), newline=newline) as f:
            yield f
    except UnicodeDecodeError:
        raise not_text(path, encoding, key) from None


def read_text(path: Path, encoding: str = UTF8, *, key: str | None = None) -> str:
    """The whole of ``path`` as text (``reading``)."""
    with reading(path, encoding, key=key) as f:
        return f.read()


def decode(data: bytes, name: str) -> str:
    """Bytes from elsewhere (standard input) as UTF-8 text, a byte-order mark dropped; else one line."""
    try:
        return data.decode(codec(UTF8))
    except UnicodeDecodeError:
        where = first_bad_byte(data, UTF8)
        assert where is not None
        raise DataError(f"{not_text_line(name, where, UTF8)}: give it UTF-8 text.") from None
