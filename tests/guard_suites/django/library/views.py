from django.http import JsonResponse
from django.shortcuts import render

from library.models import Author


def authors(request):  # type: ignore[no-untyped-def]
    found = Author.objects.order_by("id")
    rows = [{"name": a.name, "books": [b.title for b in a.books.all()]} for a in found]  # line: n+1
    return JsonResponse(rows, safe=False)


def authors_page(request):  # type: ignore[no-untyped-def]
    return render(request, "library/authors.html", {"authors": Author.objects.order_by("id")})  # line: view


def authors_fixed(request):  # type: ignore[no-untyped-def]
    found = Author.objects.order_by("id").prefetch_related("books")
    return JsonResponse([{"name": a.name, "books": [b.title for b in a.books.all()]} for a in found], safe=False)


def author(request, author_id: int):  # type: ignore[no-untyped-def]
    return JsonResponse({"name": Author.objects.get(id=author_id).name})
