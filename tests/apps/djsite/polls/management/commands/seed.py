"""``manage.py seed``: (re)create the two tables and fill them (no migrations: the tables are the test's own)."""

from django.core.management.base import BaseCommand
from django.db import connection

from polls.models import Choice, Question

QUESTIONS = 8
CHOICES = 3


class Command(BaseCommand):
    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        with connection.schema_editor() as editor:
            for model in (Choice, Question):
                if model._meta.db_table in connection.introspection.table_names():
                    editor.delete_model(model)
            editor.create_model(Question)
            editor.create_model(Choice)
        for i in range(1, QUESTIONS + 1):
            q = Question.objects.create(id=i, text=f"question {i}")
            Choice.objects.bulk_create(Choice(question=q, text=f"choice {i}.{c}", votes=c) for c in range(CHOICES))
