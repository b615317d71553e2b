"""URLs of the demo project: the blog at the root, Django's admin under /admin/."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("demo_project.blog.urls")),
]
