#!/usr/bin/env python3
"""An application writing the `book` table of tests/tools/alembic through SQLAlchemy Core, on one node's
database, while the nodes are migrated one after the other (tests/tools.rs).

Writer W owns the books with ids W*100000+1, W*100000+2, ...: it inserts them, updates their title and price
(and their ISBN once its database has the column) with a counter, and deletes some of them; ids are never used
again, so a deleted book must stay deleted. It also updates the price of a few shared books (--shared), which
every writer changes, so only their convergence can be checked. It runs until the file --stop exists, then
writes --state (JSON: the last value it committed for every book it owns, the ids it deleted with the time of
each deletion, its counts and the errors it met) and exits 0.

Every transaction is one `engine.begin()` block with a 10 s busy timeout, as an ordinary application has; the
expected state changes only once the transaction has committed. A failed transaction is rolled back, counted
and not retried.
"""

import argparse
import json
import os
import random
import sys
import time

from sqlalchemy import Column, Integer, MetaData, Numeric, String, Table, create_engine, exc, text

OWNED = 100000

metadata = MetaData()
book = Table(
    "book",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("title", String(200), nullable=False),
    Column("author_id", Integer, nullable=False),
    Column("price", Numeric(10, 2, asdecimal=False)),
    Column("isbn", String(20)),
)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True, help="the node's database file")
    p.add_argument("--writer", type=int, required=True, help="writer number W (owns ids W*100000+n)")
    p.add_argument("--author", type=int, required=True, help="author_id of the books it inserts")
    p.add_argument("--shared", default="", help="comma-separated ids of books every writer updates")
    p.add_argument("--period-ms", type=float, default=25.0, help="pause between two transactions")
    p.add_argument("--state", required=True, help="where to write the final state (JSON)")
    p.add_argument("--stop", required=True, help="stop once this file exists")
    p.add_argument("--hold-deletes", default=None,
                   help="while this file exists, delete nothing (the recipe of OPERATIONS.md for a node whose "
                        "table is being rebuilt); looked at once the transaction holds the write lock")
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()

    w = a.writer
    rng = random.Random(a.seed if a.seed is not None else w)
    shared = [int(s) for s in a.shared.split(",") if s]
    engine = create_engine(f"sqlite:///{os.path.abspath(a.db)}", connect_args={"timeout": 10})

    expected = {}  # id -> {"title", "cents", "isbn"}: the last committed value of every live owned book
    deleted = {}  # id -> when its deletion committed (unix ms), for failure messages
    errors = []
    commits = 0
    isbn_writes = 0
    next_n = 1
    counter = 0

    def has_isbn(conn) -> bool:
        return conn.execute(text("SELECT count(*) FROM pragma_table_info('book') WHERE name = 'isbn'")).scalar() > 0

    while not os.path.exists(a.stop):
        counter += 1
        changes = {}  # applied to `expected` after the commit
        gone = []
        try:
            with engine.begin() as conn:
                isbn = has_isbn(conn)

                def values(book_id: int) -> dict:
                    v = {"title": f"w{w}-{book_id}-v{counter}", "price": (counter % 100000) / 100}
                    if isbn:
                        v["isbn"] = f"{w}-{book_id}-{counter}"
                    return v

                # A new book.
                book_id = w * OWNED + next_n
                v = values(book_id)
                conn.execute(book.insert().values(id=book_id, author_id=a.author, **v))
                changes[book_id] = v
                # Updates of two live books of its own.
                live = sorted(set(expected) - set(gone))
                for book_id in rng.sample(live, min(2, len(live))):
                    v = values(book_id)
                    conn.execute(book.update().where(book.c.id == book_id).values(**v))
                    changes[book_id] = v
                # Now and then a deletion (the insert above holds the write lock: no migration runs between
                # this look at the hold file and the commit).
                holding = a.hold_deletes is not None and os.path.exists(a.hold_deletes)
                if counter % 5 == 0 and len(live) > 3 and not holding:
                    book_id = rng.choice(live)
                    conn.execute(book.delete().where(book.c.id == book_id))
                    changes.pop(book_id, None)
                    gone.append(book_id)
                # Now and then a shared book.
                if shared and counter % 4 == 0:
                    s = rng.choice(shared)
                    v = {"price": (w * 1000 + counter % 1000) / 100}
                    if isbn:
                        v["isbn"] = f"shared-{w}-{counter}"
                    conn.execute(book.update().where(book.c.id == s).values(**v))
        except exc.SQLAlchemyError as e:
            errors.append(f"transaction {counter}: {type(e).__name__}: {e}".splitlines()[0])
        else:
            commits += 1
            next_n += 1
            for book_id, v in changes.items():
                expected[book_id] = {
                    "title": v["title"],
                    "cents": round(v["price"] * 100),
                    "isbn": v.get("isbn"),
                }
                isbn_writes += "isbn" in v
            now_ms = int(time.time() * 1000)
            for book_id in gone:
                expected.pop(book_id, None)
                deleted[book_id] = now_ms
        time.sleep(a.period_ms / 1000)

    state = {
        "writer": w,
        "commits": commits,
        "isbn_writes": isbn_writes,
        "rows": {str(k): v for k, v in sorted(expected.items())},
        "deleted": {str(k): v for k, v in sorted(deleted.items())},
        "errors": errors,
    }
    tmp = a.state + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, a.state)
    print(f"writer {w}: {commits} commits, {len(expected)} live books, {len(deleted)} deleted, "
          f"{isbn_writes} ISBN writes, {len(errors)} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
