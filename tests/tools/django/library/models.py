from django.conf import settings
from django.db import models

RELEASE = settings.HL_RELEASE


class Author(models.Model):
    name = models.CharField(max_length=100)
    born = models.DateField(null=True, blank=True)

    def __str__(self):
        return self.name


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.PROTECT, related_name="books")
    # library.0002 widens it: on SQLite, Django rebuilds the table (new__library_book, copy, drop, rename).
    title = models.CharField(max_length=300 if RELEASE >= 2 else 200)
    isbn = models.CharField(max_length=20, unique=True)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    published_at = models.DateTimeField()
    data = models.JSONField(default=dict)
    if RELEASE >= 2:
        # library.0002 adds it, with a default in the database so that the code of release 1 (and rows
        # replicated from nodes not migrated yet) can still insert books without it.
        edition = models.PositiveIntegerField(db_default=1)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["author", "title"], name="library_book_author_title_uniq"),
        ]

    def __str__(self):
        return self.title
