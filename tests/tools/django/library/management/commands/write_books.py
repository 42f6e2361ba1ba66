"""An application writing one node's database through the ORM until SIGTERM.

It owns the books (and their placements, same primary key) FIRST .. FIRST+COUNT-1: it inserts each once, updates
it again and again (a counter in its title, price, JSON data, publication time, shelf position, and, with the
code of release 2, its edition), and deletes some of them for good: operation i visits book FIRST + i % COUNT
and deletes it when i is a multiple of --delete-every. Every fifth operation also updates one of the shared
books, which every writer overwrites. After every committed transaction it records the last state of
every owned object in STATE (JSON, replaced atomically); `check_books` compares a database with it.

A failed transaction (a Django database error) is rolled back, counted and logged; the writer goes on. SIGTERM
ends it after the transaction in progress (exit 0). `--resume` continues from STATE: the same writer restarted
with the code of another release.
"""
import json
import os
import random
import signal
import sys
import time
from decimal import Decimal

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, transaction
from django.utils import timezone

from library.models import Author, Book
from shelf.models import Placement

RELEASE = settings.HL_RELEASE


class Command(BaseCommand):
    help = "Write owned and shared books through the ORM until SIGTERM, recording the last state in a JSON file."

    def add_arguments(self, parser):
        parser.add_argument("--writer", required=True)
        parser.add_argument("--first", type=int, required=True)
        parser.add_argument("--count", type=int, default=40)
        parser.add_argument("--shared", default="1,2,3,4")
        parser.add_argument("--state", required=True)
        parser.add_argument("--period-ms", type=int, default=20)
        parser.add_argument("--delete-every", type=int, default=25)
        parser.add_argument("--resume", action="store_true")
        # While this file exists, a delete becomes an update: the recipe for deletes during the node's own
        # migration (docs/OPERATIONS.md, "Migrations and tools").
        parser.add_argument("--hold-deletes", default="")

    def handle(self, *args, **o):
        self.stop = False
        signal.signal(signal.SIGTERM, self.on_term)
        self.writer = o["writer"]
        self.path = o["state"]
        if o["resume"] and os.path.exists(self.path):
            with open(self.path) as f:
                self.state = json.load(f)
        else:
            self.state = {"writer": self.writer, "ops": 0, "errors": 0, "objects": {}}
        self.state["release"] = RELEASE
        self.state.setdefault("runs", []).append(
            {"release": RELEASE, "pid": os.getpid(), "ops": 0, "started": timezone.now().isoformat()}
        )
        first, count = o["first"], o["count"]
        shared = [int(s) for s in o["shared"].split(",") if s]
        rng = random.Random(f"{self.writer}-{os.getpid()}")
        period = o["period_ms"] / 1000.0

        self.attempt(lambda: Author.objects.get_or_create(pk=first, defaults={"name": f"Author of {self.writer}"}))
        i = self.state["ops"]
        while not self.stop:
            i += 1
            pk = first + i % count
            self.op = i
            obj = self.state["objects"].get(str(pk))
            if obj is None:
                ok = self.attempt(lambda: self.insert(pk, first, i))
            elif obj["deleted"]:
                ok = self.attempt(lambda: self.update_shared(rng.choice(shared), i))
            elif i % o["delete_every"] == 0 and not (o["hold_deletes"] and os.path.exists(o["hold_deletes"])):
                ok = self.attempt(lambda: self.delete(pk))
            else:
                ok = self.attempt(lambda: self.update(pk, i))
            if ok and i % 5 == 0 and shared:
                self.attempt(lambda: self.update_shared(rng.choice(shared), i))
            if ok:
                self.state["ops"] = i
                self.state["runs"][-1]["ops"] += 1
                self.save()
            else:
                i -= 1
            time.sleep(period)
        self.save()
        objects = self.state["objects"].values()
        self.stdout.write(
            f"writer {self.writer} release {RELEASE} stopped: ops={self.state['ops']} "
            f"live={sum(not o['deleted'] for o in objects)} deleted={sum(o['deleted'] for o in objects)} "
            f"errors={self.state['errors']}"
        )

    def on_term(self, _signum, _frame):
        self.stop = True

    def attempt(self, op):
        try:
            with transaction.atomic():
                op()
            return True
        except DatabaseError as e:
            self.state["errors"] += 1
            print(f"writer {self.writer}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            time.sleep(0.05)
            return False

    def values(self, pk, i):
        return {
            "title": f"{self.writer} book {pk} v{i}",
            "price": Decimal(i % 100000) / 100 + Decimal("0.05"),
            "data": {"writer": self.writer, "n": i, "tags": ["t%d" % (i % 7)], "nested": {"release": RELEASE}},
            "published_at": timezone.now(),
        }

    def insert(self, pk, author_id, i):
        v = self.values(pk, i)
        extra = {"edition": 1 + i % 50} if RELEASE >= 2 else {}
        book = Book.objects.create(pk=pk, author_id=author_id, isbn=f"978-1-{pk:08d}", **v, **extra)
        placement = Placement.objects.create(pk=pk, book=book, shelf=f"{self.writer}-A", position=i,
                                             placed_at=v["published_at"])
        self.record(pk, v, extra, placement)

    def update(self, pk, i):
        book = Book.objects.get(pk=pk)
        v = self.values(pk, i)
        for k, val in v.items():
            setattr(book, k, val)
        extra = {}
        if RELEASE >= 2:
            extra["edition"] = book.edition = 1 + i % 50
        book.save()
        placement = Placement.objects.get(pk=pk)
        placement.position = i
        placement.shelf = f"{self.writer}-{'AB'[i % 2]}"
        placement.save(update_fields=["position", "shelf"])
        self.record(pk, v, extra, placement)

    def delete(self, pk):
        Book.objects.get(pk=pk).delete()  # and its placement (CASCADE)
        self.state["objects"][str(pk)] = {"deleted": True, "at": timezone.now().isoformat(), "op": self.op}

    def update_shared(self, pk, i):
        Book.objects.filter(pk=pk).update(
            title=f"shared {pk} by {self.writer} v{i}",
            price=Decimal(i % 1000) + Decimal("0.50"),
            data={"shared": True, "writer": self.writer, "n": i},
            published_at=timezone.now(),
        )
        Placement.objects.filter(pk=pk).update(position=i, shelf=f"{self.writer}-S")

    def record(self, pk, v, extra, placement):
        previous = self.state["objects"].get(str(pk), {})
        obj = {
            "deleted": False,
            "title": v["title"],
            "price": str(v["price"]),
            "data": v["data"],
            "published_at": v["published_at"].isoformat(),
            "placement": {"shelf": placement.shelf, "position": placement.position},
        }
        # A book last written by the code of release 1 keeps the edition it had (the database's default 1 for
        # one inserted by it).
        obj["edition"] = extra.get("edition", previous.get("edition", 1))
        self.state["objects"][str(pk)] = obj

    def save(self):
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
