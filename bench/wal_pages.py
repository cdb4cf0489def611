#!/usr/bin/env python3
"""Which tables and indexes the commits in a WAL file wrote, in pages per commit.

    python3 bench/wal_pages.py COPY.db COPY.db-wal

Take the two files from a running server (for example `bench load --keep DIR`, copying
DIR/bench.db-wal first and DIR/bench.db right after, while the workflow phase runs). The WAL's
valid frames are those carrying its header's salts; a frame with a nonzero "database size" ends a
commit. Each frame's page number is attributed to the table or index that owns that page in the
database file (SQLite's dbstat); pages the file does not have yet are counted as "(new page)".
Standard library only; needs an sqlite3 module built with dbstat (CPython's usually is).
"""
import collections
import sqlite3
import struct
import sys


def commits(wal: bytes):
    """The page numbers written by each complete commit in `wal`, oldest first."""
    _magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = struct.unpack(">8I", wal[:32])
    done, current, offset = [], [], 32
    while offset + 24 + page_size <= len(wal):
        page, db_size, s1, s2 = struct.unpack(">4I", wal[offset:offset + 16])
        if (s1, s2) != (salt1, salt2):
            break
        current.append(page)
        if db_size:
            done.append(current)
            current = []
        offset += 24 + page_size
    return done


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    db, wal_path = sys.argv[1], sys.argv[2]
    with open(wal_path, "rb") as f:
        wal = f.read()
    if len(wal) < 32:
        print(f"{wal_path}: no WAL header", file=sys.stderr)
        return 2
    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    owner = dict((page, name) for name, page in conn.execute("SELECT name, pageno FROM dbstat"))
    found = commits(wal)
    if not found:
        print("no complete commit in the WAL", file=sys.stderr)
        return 1
    pages = collections.Counter(owner.get(p, "(new page)") for c in found for p in c)
    total = sum(pages.values())
    print(f"{len(found)} commits, {total / len(found):.1f} pages per commit")
    for name, n in pages.most_common():
        print(f"{name:36s} {n / len(found):7.2f} {100 * n / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
