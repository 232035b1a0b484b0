"""Views of the Django test project. Lines marked ``# marker: NAME`` are looked up by the tests."""

from django.http import HttpResponse, JsonResponse
from django.shortcuts import render

from .models import Question


def ping(request):  # type: ignore[no-untyped-def]
    return HttpResponse("ok")


def questions(request):  # type: ignore[no-untyped-def]
    # the template loops over each question's choice_set: one query per question
    return render(request, "polls/choices.html", {"questions": Question.objects.order_by("id")})  # marker: render


def questions_jinja(request):  # type: ignore[no-untyped-def]
    qs = Question.objects.order_by("id")
    return render(request, "polls/choices.jinja", {"questions": qs}, using="jinja2")  # marker: render_jinja


def question(request, question_id):  # type: ignore[no-untyped-def]
    q = Question.objects.get(pk=question_id)  # marker: point
    return JsonResponse({"text": q.text})
