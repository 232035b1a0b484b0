import os

SECRET_KEY = "guard-suite-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = ["library"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "guardsite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "USER": os.environ.get("PGUSER", "postgres"),
        "NAME": f"dbperf_guard_{os.getpid()}",  # pytest-django makes and drops test_<NAME>
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
