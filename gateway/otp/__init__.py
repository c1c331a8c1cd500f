"""One-time passwords as a service (docs/otp.md)."""
