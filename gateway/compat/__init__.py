"""Other gateways' APIs, spoken over smsgw's own services (issue 19)."""
