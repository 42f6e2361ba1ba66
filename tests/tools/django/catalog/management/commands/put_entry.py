"""Inserts or updates one catalog entry through the ORM (with the code of release 2 also its summary)."""
from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from catalog.models import Entry


class Command(BaseCommand):
    help = "Insert or update one catalog entry."

    def add_arguments(self, parser):
        parser.add_argument("--id", type=int, required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--summary")

    def handle(self, *args, id, name, summary, **options):
        values = {"code": f"entry-{id}", "name": name, "created": timezone.now()}
        if settings.HL_RELEASE >= 2:
            values["summary"] = summary
        elif summary is not None:
            raise SystemExit("--summary needs the code of release 2")
        entry, created = Entry.objects.update_or_create(pk=id, defaults=values)
        self.stdout.write(f"{'created' if created else 'updated'} entry {entry.pk}")
