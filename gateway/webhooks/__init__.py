"""Outgoing webhooks: the outbox, signing, the SSRF guard and the delivery worker."""
