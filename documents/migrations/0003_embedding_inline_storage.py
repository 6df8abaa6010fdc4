from django.db import migrations


class Migration(migrations.Migration):
    """Keep chunk vectors inside the heap row.

    pgvector's type defaults to EXTERNAL storage, so once a row passes ~2 KB (a 384-float vector is 1.5 KB, plus
    the text and its tsvector) the vector is moved to the TOAST table and every exact distance computation reads
    several extra pages to fetch it back: ~9 µs of a ~10 µs per-row scan. MAIN keeps it inline unless the row
    cannot fit a page at all (large OpenAI vectors), and lets the text be TOASTed instead. Applies to rows
    written from now on; `manage.py reindex` rewrites older ones.
    """

    dependencies = [("documents", "0002_lexeme_counts")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE documents_chunk ALTER COLUMN embedding SET STORAGE MAIN",
            reverse_sql="ALTER TABLE documents_chunk ALTER COLUMN embedding SET STORAGE EXTERNAL",
        ),
    ]
