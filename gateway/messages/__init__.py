"""Messages: validation, segment counting, storage and the send/receipt/cancel service."""
