from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("library", "0001_initial"),
    ]

    operations = [
        # NOT NULL with a database default: on SQLite Django rebuilds the table for it.
        migrations.AddField(
            model_name="book",
            name="edition",
            field=models.PositiveIntegerField(db_default=1),
        ),
        # A new length: another rebuild.
        migrations.AlterField(
            model_name="book",
            name="title",
            field=models.CharField(max_length=300),
        ),
    ]
