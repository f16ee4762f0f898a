"""Secrets we must be able to use again (webhook signing secrets) are encrypted at rest.

API keys are hashed because we only compare them; a signing secret has to be read back to
sign, so the database keeps it Fernet-encrypted under HITL_SECRETS_KEY (by default derived
from SECRET_KEY). A database dump alone does not reveal them.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    material = settings.HITL_SECRETS_KEY or settings.SECRET_KEY
    key = hashlib.sha256(b"nihil-obstat/secrets/v1:" + material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError(
            "Cannot decrypt a stored secret: HITL_SECRETS_KEY (or SECRET_KEY) changed."
        ) from None


def new_webhook_secret() -> str:
    """Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
