import django.contrib.postgres.indexes
from django.conf import settings
from django.db import migrations, models

import documents.models

# A copy, as migrations are frozen: documents.models.OWNER_LEXEMES_FUNCTION_SQL is the current definition.
FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION chunk_owner_lexemes(owner bigint, lexemes tsvector) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT array(SELECT owner::text || ':' || lexeme FROM unnest(tsvector_to_array(lexemes)) AS lexeme) $$
"""


class Migration(migrations.Migration):
    """Indexes for the keyword half of search at scale: the full-text GIN index becomes one on owner-qualified
    lexemes, so that a word's lookup reads only the searching user's postings (see documents.models.OwnerLexemes),
    and the document-frequency lookup reads LexemeCount index-only."""

    dependencies = [
        ("documents", "0003_embedding_inline_storage"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunSQL(FUNCTION_SQL, reverse_sql="DROP FUNCTION IF EXISTS chunk_owner_lexemes(bigint, tsvector)"),
        migrations.RemoveIndex(model_name="chunk", name="chunk_search_vector_gin"),
        migrations.AddIndex(
            model_name="chunk",
            index=django.contrib.postgres.indexes.GinIndex(
                documents.models.OwnerLexemes("owner", "search_vector"), name="chunk_owner_lexemes_gin"
            ),
        ),
        migrations.RemoveIndex(model_name="lexemecount", name="lexeme_owner_lexeme"),
        migrations.AddIndex(
            model_name="lexemecount",
            index=models.Index(
                fields=["owner", "lexeme"], include=("document", "chunks"), name="lexeme_owner_lexeme_cover"
            ),
        ),
    ]
