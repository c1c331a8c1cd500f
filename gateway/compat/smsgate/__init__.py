"""SMSGate's ("SMS Gateway for Android") third-party REST API over smsgw (docs/smsgate.md)."""
