"""Compares this database with the last state writers recorded (`write_books --state`): every live object has
the writer's last values, every deleted one is absent. Prints one line per difference and a summary; exits 1
when anything differs. Run it with the code of release 2 once the database has `library.0002`."""
import json
from datetime import datetime
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError

from library.models import Book
from shelf.models import Placement


class Command(BaseCommand):
    help = "Compare the database with writers' recorded states."

    def add_arguments(self, parser):
        parser.add_argument("states", nargs="+")

    def handle(self, *args, states, **options):
        problems = []
        kinds = {"reverted": 0, "resurrected": 0, "missing": 0, "placement": 0}
        live = deleted = 0
        for path in states:
            with open(path) as f:
                state = json.load(f)
            w = state["writer"]
            for key, want in sorted(state["objects"].items(), key=lambda kv: int(kv[0])):
                pk = int(key)
                book = Book.objects.filter(pk=pk).first()
                placement = Placement.objects.filter(pk=pk).first()
                if want["deleted"]:
                    deleted += 1
                    if book is not None or placement is not None:
                        kinds["resurrected"] += 1
                        title = book.title if book is not None else None
                        problems.append(
                            f"{w} book {pk}: deleted by its writer (operation {want.get('op')} at {want.get('at')}), "
                            f"present here (book {title!r}, placement {placement is not None})"
                        )
                    continue
                live += 1
                if book is None:
                    kinds["missing"] += 1
                    problems.append(f"{w} book {pk}: missing, its writer last wrote {want['title']!r}")
                    continue
                got = {
                    "title": book.title,
                    "price": book.price,
                    "data": book.data,
                    "published_at": book.published_at,
                    "edition": book.edition,
                }
                expected = {
                    "title": want["title"],
                    "price": Decimal(want["price"]),
                    "data": want["data"],
                    "published_at": datetime.fromisoformat(want["published_at"]),
                    "edition": want["edition"],
                }
                differ = [f for f in got if got[f] != expected[f]]
                if differ:
                    kinds["reverted"] += 1
                    f = differ[0]
                    problems.append(
                        f"{w} book {pk}: {', '.join(differ)} differ; {f} is {got[f]!r}, its writer last wrote "
                        f"{expected[f]!r}"
                    )
                if placement is None:
                    kinds["placement"] += 1
                    problems.append(f"{w} placement {pk}: missing")
                elif (placement.shelf, placement.position) != (
                    want["placement"]["shelf"],
                    want["placement"]["position"],
                ):
                    kinds["placement"] += 1
                    problems.append(
                        f"{w} placement {pk}: ({placement.shelf!r}, {placement.position}), its writer last wrote "
                        f"({want['placement']['shelf']!r}, {want['placement']['position']})"
                    )
        for p in problems:
            self.stdout.write(p)
        self.stdout.write(
            f"checked {live} live and {deleted} deleted books: {len(problems)} differ "
            f"({kinds['reverted']} books with older values, {kinds['resurrected']} deleted books present, "
            f"{kinds['missing']} missing, {kinds['placement']} placements differ)"
        )
        if problems:
            raise CommandError(f"{len(problems)} objects differ from what their writers last wrote")
