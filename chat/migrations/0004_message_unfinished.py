from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without blocking writes to the messages table (CONCURRENTLY cannot run in a transaction).
    atomic = False

    dependencies = [
        ("chat", "0003_message_lease_until"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="message",
            index=models.Index(
                condition=models.Q(("status__in", ["pending", "streaming"])),
                fields=["id"],
                name="message_unfinished",
            ),
        ),
    ]
