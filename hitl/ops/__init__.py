"""Operations: health checks, Prometheus metrics and the override-rate alert (README "For
operators")."""
