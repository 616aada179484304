"""Read a manifest CSV into strings, turning every way a file can be broken into one clear problem.

Used by :func:`client.manifest.load_manifest` (which wraps :class:`CsvProblem` into its
``ManifestError``). Row numbers are spreadsheet rows: the header is row 1.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pandas as pd

__all__ = ["CsvProblem", "read_manifest_csv"]

# Files people save by mistake instead of a CSV, by their first bytes.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx / LibreOffice .ods workbook?)"),
    (b"\xd0\xcf\x11\xe0", "an old Excel .xls workbook"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
)
_SAVE_AS = "open it in Excel / LibreOffice and save it as 'CSV UTF-8 (comma delimited)'"
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


class CsvProblem(ValueError):
    """The file cannot be read as a manifest CSV.

    Args:
        message: what is wrong and what to do.
        row: the spreadsheet row where it shows, if known.
    """

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.row = row


def read_manifest_csv(path: Path) -> pd.DataFrame:
    """The CSV as stripped strings; columns = the header row as written (duplicates kept as
    a list in ``frame.attrs["header"]``), index = spreadsheet row.

    Raises:
        CsvProblem: not found, a folder, binary, not UTF-8, empty, another delimiter, a row
            with too many cells or an unclosed quote.
    """
    if not path.exists():
        raise CsvProblem(f"manifest file not found: {path}")
    if path.is_dir():
        raise CsvProblem(f"{path} is a folder; give the manifest CSV file")
    data = path.read_bytes()
    text = _decode(data)
    if not text.strip():
        raise CsvProblem("the file is empty; the first line must be the header")
    if not text.splitlines()[0].strip():
        raise CsvProblem(
            "the first line is blank: the header must be on the first line (remove the blank "
            "lines above it)",
            row=1,
        )
    _check_delimiter(text)
    try:
        table = pd.read_csv(
            io.StringIO(text),
            header=None,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            engine="python",  # exact line numbers in its errors; manifests are small
        )
    except pd.errors.EmptyDataError as err:
        raise CsvProblem("the file is empty; the first line must be the header") from err
    except (pd.errors.ParserError, csv.Error, ValueError) as err:
        raise _parser_problem(text, err) from err
    table = table.fillna("").map(lambda cell: str(cell).strip())
    header = [str(name) for name in table.iloc[0]]
    frame = table.iloc[1:].copy()
    frame.index = pd.RangeIndex(2, len(table) + 1)  # spreadsheet rows
    frame.columns = _unique_names(header)
    frame.attrs["header"] = header
    return frame


def _decode(data: bytes) -> str:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            raise CsvProblem(f"this is {kind}, not a CSV text file; {_SAVE_AS}")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CsvProblem(f"the file is UTF-16 text ('Unicode text' in Excel); {_SAVE_AS}")
    if b"\x00" in data:
        raise CsvProblem(f"binary file (it contains NUL bytes), not CSV text; {_SAVE_AS}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        row = data.count(b"\n", 0, err.start) + 1
        byte = data[err.start : err.start + 1].hex()
        guess = data[err.start : err.start + 1].decode("cp1252", errors="replace")
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise CsvProblem(
            f"not UTF-8 text: byte 0x{byte} ({guess!r} in Windows-1252 / Latin-1) at "
            f"character {column} of the line; {_SAVE_AS}",
            row=row,
        ) from err


def _check_delimiter(text: str) -> None:
    header = next((line for line in text.splitlines() if line.strip()), "")
    if "," in header:
        return
    counts = {d: header.count(d) for d in _OTHER_DELIMITERS}
    delimiter = max(counts, key=lambda d: counts[d])
    if counts[delimiter]:
        name = _OTHER_DELIMITERS[delimiter]
        raise CsvProblem(
            f"the header {header[:80]!r} has no comma but {counts[delimiter]} {name}s: the file "
            f"is {name}-separated; manifests are comma-separated ({_SAVE_AS}, or in pandas "
            "df.to_csv(path, index=False))",
            row=1,
        )


def _parser_problem(text: str, err: Exception) -> CsvProblem:
    message = str(err)
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if fields:
        expected, line, saw = (int(g) for g in fields.groups())
        return CsvProblem(
            f"the row has {saw} cell{'s' if saw != 1 else ''} but the header has {expected}: "
            "put a cell that contains "
            'a comma in double quotes ("a, b"), or remove the extra comma',
            row=line,
        )
    lowered = message.lower()
    if any(word in lowered for word in ("eof", "end of data", "quote", "inside string")):
        row = _unclosed_quote_row(text)
        return CsvProblem(
            'a double quote (") opens a cell that is never closed, so the rest of the file '
            'reads as one cell: close the quote, or write a literal quote as two ("")',
            row=row,
        )
    if "expected after" in lowered:
        return CsvProblem(
            'text follows the closing double quote of a cell (like "ab"c): quote the whole '
            'cell and double the quotes inside it ("""ab""c")',
            row=_strict_error_row(text),
        )
    return CsvProblem(f"not a valid CSV file: {message}", row=_strict_error_row(text))


def _strict_error_row(text: str) -> int | None:
    """The line where Python's strict CSV reader fails (None when it does not)."""
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        for _ in reader:
            pass
    except csv.Error:
        return reader.line_num
    return None


def _unclosed_quote_row(text: str) -> int | None:
    """The line where a quoted cell starts that never ends (None when none is found)."""
    inside, start = False, None
    for number, line in enumerate(text.splitlines(), start=1):
        position = 0
        while position < len(line):
            if line[position] == '"':
                if not inside:
                    inside, start = True, number
                elif line[position + 1 : position + 2] == '"':
                    position += 1  # a doubled quote inside a quoted cell is a literal quote
                else:
                    inside = False
            position += 1
    return start if inside else None


def _unique_names(header: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for position, name in enumerate(header, start=1):
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name} (column {position})")
    return names
