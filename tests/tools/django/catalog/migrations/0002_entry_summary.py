from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="entry",
            name="summary",
            field=models.TextField(blank=True, null=True),
        ),
    ]
