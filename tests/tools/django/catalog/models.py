from django.conf import settings
from django.db import models


class Entry(models.Model):
    code = models.CharField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    created = models.DateTimeField()
    if settings.HL_RELEASE >= 2:
        # catalog.0002 adds it: nullable, so on SQLite a plain ALTER TABLE ... ADD COLUMN.
        summary = models.TextField(null=True, blank=True)

    def __str__(self):
        return self.code
