from django.db import models


class Placement(models.Model):
    book = models.ForeignKey("library.Book", on_delete=models.CASCADE, related_name="placements")
    shelf = models.CharField(max_length=20)
    position = models.IntegerField(default=0)
    placed_at = models.DateTimeField()

    def __str__(self):
        return f"{self.shelf}/{self.position}"
