"""URLs of the demo blog."""

from django.urls import path

from demo_project.blog import views

app_name = "blog"

urlpatterns = [
    path("", views.home, name="home"),
    path("authors/<int:pk>/", views.author_detail, name="author"),
    path("authors/<int:pk>/posts/", views.author_posts_page, name="author_posts"),
    path("authors/<int:pk>/posts/new/", views.new_post, name="new_post"),
    path("authors/<int:pk>/profile/", views.edit_profile, name="edit_profile"),
    path("trending/", views.trending, name="trending"),
    path("stats/", views.stats_page, name="stats"),
]
