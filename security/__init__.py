"""Security: authentication (JWT/JWKS), the embedded OAuth2 issuer, authorization by scope."""
