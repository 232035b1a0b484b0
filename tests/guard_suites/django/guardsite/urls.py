from django.urls import path
from library import views

urlpatterns = [
    path("authors/", views.authors),
    path("authors/template/", views.authors_page),
    path("authors/fixed/", views.authors_fixed),
    path("authors/<int:author_id>/", views.author),
]
