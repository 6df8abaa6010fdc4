from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0002_message_instructions_retrieval"),
    ]

    operations = [
        # Nullable without a default: a change to the catalogue only, however big the table.
        migrations.AddField(
            model_name="message",
            name="lease_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
