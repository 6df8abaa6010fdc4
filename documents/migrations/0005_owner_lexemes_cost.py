from django.db import migrations


class Migration(migrations.Migration):
    """The planner's cost of chunk_owner_lexemes, so that the keyword half of search reads a word's chunks through
    the GIN index on it even in a small table instead of computing it for every row (see
    documents.models.OWNER_LEXEMES_FUNCTION_SQL)."""

    dependencies = [("documents", "0004_owner_lexemes_index")]

    operations = [
        migrations.RunSQL(
            "ALTER FUNCTION chunk_owner_lexemes(bigint, tsvector) COST 10000",
            reverse_sql="ALTER FUNCTION chunk_owner_lexemes(bigint, tsvector) COST 100",
        ),
    ]
