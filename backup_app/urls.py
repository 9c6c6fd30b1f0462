"""URLs of backup_app; include them under a prefix: ``path("backup/", include("backup_app.urls"))``."""

from django.urls import path

from . import views

app_name = "backup_app"
urlpatterns = [path("health/", views.health, name="health")]
