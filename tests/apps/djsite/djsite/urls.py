from django.urls import path
from polls import views

urlpatterns = [
    path("ping", views.ping),
    path("questions", views.questions),
    path("questions-jinja", views.questions_jinja),
    path("question/<int:question_id>", views.question),
]
