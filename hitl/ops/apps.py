from __future__ import annotations

from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "hitl.ops"
    label = "ops"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from hitl.ops import metrics

        metrics.connect_process_exit_hooks()
