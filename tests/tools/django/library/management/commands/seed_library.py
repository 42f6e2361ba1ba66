"""Creates the rows every writer shares: two authors and the books 1..N (each with a placement)."""
from decimal import Decimal

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from library.models import Author, Book
from shelf.models import Placement


class Command(BaseCommand):
    help = "Create the shared authors and books."

    def add_arguments(self, parser):
        parser.add_argument("--books", type=int, default=4)

    def handle(self, *args, books, **options):
        now = timezone.now()
        with transaction.atomic():
            authors = [
                Author.objects.create(pk=1, name="Shared Author One"),
                Author.objects.create(pk=2, name="Shared Author Two"),
            ]
            for pk in range(1, books + 1):
                book = Book.objects.create(
                    pk=pk,
                    author=authors[pk % 2],
                    title=f"shared {pk}",
                    isbn=f"978-0-{pk:08d}",
                    price=Decimal("10.00"),
                    published_at=now,
                    data={"shared": True, "n": 0},
                )
                Placement.objects.create(pk=pk, book=book, shelf="S0", position=0, placed_at=now)
        self.stdout.write(f"seeded {books} shared books")
