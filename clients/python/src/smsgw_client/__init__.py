"""smsgw client."""
