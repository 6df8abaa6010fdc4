"""Counting a zip's members before `zipfile.ZipFile` is allowed to parse its central directory.

Opening a `ZipFile` parses the whole directory into `ZipInfo` objects at once (~460 bytes and ~13 µs a
member), so a 50 MB upload listing a million tiny members costs 460 MB and 13 s of CPU before any limit
on the member count can be checked. The count is taken here from the fixed-size parts of the directory.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

_RECORD = struct.Struct("<4s42x")  # a central directory record: signature, then fixed fields to byte 46
_LENGTHS = struct.Struct("<HHH")  # file name, extra field and comment lengths, at byte 28 of a record
_RECORD_SIGNATURE = b"PK\x01\x02"


def zip_member_count(path: Path, *, limit: int) -> int:
    """How many members `zipfile.ZipFile(path)` would list, counted only as far as `limit` + 1.

    The end of central directory record (zip64 included) is found with zipfile's own function, so this
    reads the directory zipfile would read. Its declared count can lie (zipfile walks the directory by
    its size in bytes), so up to `limit` + 1 record headers are walked as well. A result over `limit`
    means too many; 0 means no readable directory, which `zipfile.ZipFile` then reports as damage.
    """
    try:
        return _count(path, limit)
    except AttributeError:
        # A Python whose zipfile renamed these private helpers: uploads must not fail on it, and the count
        # is still checked after opening (`_vet_archive`), only later.
        return 0


def _count(path: Path, limit: int) -> int:
    with Path(path).open("rb") as handle:
        try:
            end = zipfile._EndRecData(handle)
        except (OSError, zipfile.BadZipFile):
            return 0
        if not end:
            return 0
        declared = end[zipfile._ECD_ENTRIES_TOTAL]
        if declared > limit:
            return declared
        size = end[zipfile._ECD_SIZE]
        start = end[zipfile._ECD_LOCATION] - size
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
            # Between the directory and the end record of a zip64 archive: its zip64 end record and locator.
            start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
        if start < 0:
            return 0
        handle.seek(start)
        count = walked = 0
        while walked < size and count <= limit:
            record = handle.read(_RECORD.size)
            if len(record) != _RECORD.size or _RECORD.unpack(record)[0] != _RECORD_SIGNATURE:
                break  # damaged: zipfile will say so
            variable = sum(_LENGTHS.unpack_from(record, 28))
            handle.seek(variable, 1)
            walked += _RECORD.size + variable
            count += 1
        return count
