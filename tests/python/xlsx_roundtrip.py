"""Excel workbooks for the `excel` tests, written and read by openpyxl and pandas (not by
Spillway's own crates).

Usage:
  python xlsx_roundtrip.py fixture PATH   write the fixture workbook the read tests query
  python xlsx_roundtrip.py read PATH      print one JSON object describing the workbook
  python xlsx_roundtrip.py dimension PATH print the data sheet's used range (`A1:A1048576`),
                                          read from the XML without loading a million rows
"""
import datetime
import json
import re
import sys
import zipfile

import openpyxl
import pandas


def fixture(path):
    """Two sheets. `Notes` (first) holds text only; `Claims` holds typed cells: whole numbers,
    fractions, dates, date-times, text codes with leading zeros, booleans, a column mixing
    numbers and text, an empty cell and a blank header."""
    book = openpyxl.Workbook()
    notes = book.active
    notes.title = "Notes"
    notes.append(["note"])
    notes.append(["first sheet"])
    claims = book.create_sheet("Claims")
    claims.append(["claim_id", "cost", "fill_date", "filled_at", "ndc", "generic", "mixed", None])
    claims.append([1, 12.5, datetime.date(2024, 1, 31), datetime.datetime(2024, 1, 31, 14, 30, 0),
                   "00002143380", True, 7, "x"])
    claims.append([2, 3.0, datetime.date(2024, 2, 29), datetime.datetime(2024, 2, 29, 0, 0, 5),
                   "00456", False, "seven", None])
    claims.append([3, None, datetime.date(1999, 12, 31), None, "12345678901", None, 8.5, "z"])
    for row in claims.iter_rows(min_row=2):
        row[2].number_format = "yyyy-mm-dd"
        row[3].number_format = "yyyy-mm-dd hh:mm:ss"
    book.save(path)


def cell_value(value):
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return value


def read(path):
    book = openpyxl.load_workbook(path)
    sheets = []
    for sheet in book.worksheets:
        rows = []
        for row in sheet.iter_rows():
            rows.append([
                {
                    "type": type(cell.value).__name__,
                    "value": cell_value(cell.value),
                    "format": cell.number_format,
                    "bold": bool(cell.font and cell.font.b),
                }
                for cell in row
            ])
        sheets.append({"name": sheet.title, "freeze_panes": sheet.freeze_panes, "rows": rows})
    frame = pandas.read_excel(path, sheet_name=0)
    records = [[cell_value(v.to_pydatetime() if hasattr(v, "to_pydatetime") else v)
                if not pandas.isna(v) else None for v in row]
               for row in frame.itertuples(index=False)]
    print(json.dumps({
        "sheets": sheets,
        "pandas": {
            "columns": list(frame.columns),
            "dtypes": [str(t) for t in frame.dtypes],
            "rows": records,
        },
    }, default=str))


def dimension(path):
    with zipfile.ZipFile(path) as archive:
        with archive.open("xl/worksheets/sheet1.xml") as sheet:
            head = sheet.read(4096).decode("utf-8", "replace")
    print(re.search(r'<dimension ref="([^"]+)"', head).group(1))


if __name__ == "__main__":
    command, target = sys.argv[1], sys.argv[2]
    {"fixture": fixture, "read": read, "dimension": dimension}[command](target)
