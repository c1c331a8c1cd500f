"""Inbound SMS: what phones received, stored once and logged as events."""
