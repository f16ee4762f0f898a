from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from hitl.api import errors

urlpatterns = [
    path("", RedirectView.as_view(url="/queue/", permanent=False)),
    # Browsers ask every site for /favicon.ico, the admin's and the API docs' pages too.
    path("favicon.ico", RedirectView.as_view(url=static("hitl/favicon.svg"), permanent=True)),
    path("", include("hitl.urls")),
    path("", include("hitl.ops.urls")),  # /healthz, /readyz, /metrics
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("hitl.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Last: any other /api/ path is the API's JSON 404, DEBUG or not.
    re_path(r"^api/", errors.api_not_found, name="api-not-found"),
]

handler404 = errors.handler404
handler500 = errors.handler500
