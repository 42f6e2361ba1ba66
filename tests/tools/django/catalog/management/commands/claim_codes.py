"""Creates catalog entries whose codes another node's application claims at the same moment.

Entry FIRST + k gets the code `race-k`, for k in 0 .. COUNT-1: two of these commands on two nodes with different
--first (so different primary keys) and the same --count collide on every code, on the UNIQUE index of
`Entry.code`. To start them together, each writes --ready once Django is set up and its database connection is
open, then waits for --start to exist (at most --wait seconds, else exit 2) and creates its entries one
transaction each, as fast as it can.

A create that fails with IntegrityError (the other node's entry with that code already arrived here) is an
ordinary application error, as on a single SQLite database: rolled back, counted, not retried. Any other error
is counted apart. The last line on stdout is JSON: {"created": [ids], "failed": [ids], "errors": [messages], "seconds":
how long the writes took}.
"""
import json
import os
import time

from django.core.management.base import BaseCommand
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from catalog.models import Entry


class Command(BaseCommand):
    help = "Create entries FIRST..FIRST+COUNT-1 with codes race-0..race-(COUNT-1), after a start signal."

    def add_arguments(self, parser):
        parser.add_argument("--first", type=int, required=True)
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--name", required=True, help="written into each entry's name")
        parser.add_argument("--ready", required=True, help="created once this process is ready to write")
        parser.add_argument("--start", required=True, help="writing starts once this file exists")
        parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for --start")
        parser.add_argument("--order", choices=["ascending", "descending"], default="ascending")

    def handle(self, *args, first, count, name, ready, start, wait, order, **options):
        # Open the connection (and import everything) before saying ready: the start is then a matter of
        # milliseconds for both processes.
        Entry.objects.exists()
        with open(ready, "w"):
            pass
        deadline = time.monotonic() + wait
        while not os.path.exists(start):
            if time.monotonic() > deadline:
                self.stderr.write(f"no start file {start} within {wait}s")
                raise SystemExit(2)
            time.sleep(0.0005)

        began = time.monotonic()
        created, failed, errors = [], [], []
        for k in range(count) if order == "ascending" else reversed(range(count)):
            pk = first + k
            try:
                with transaction.atomic():
                    Entry.objects.create(pk=pk, code=f"race-{k}", name=name, created=timezone.now())
                created.append(pk)
            except IntegrityError:
                failed.append(pk)
            except DatabaseError as e:
                errors.append(f"{pk}: {e}")
        seconds = round(time.monotonic() - began, 3)
        self.stdout.write(json.dumps({"created": created, "failed": failed, "errors": errors, "seconds": seconds}))
