"""The benchmark (`smsgw bench`, scripts/bench): our figures, and the raw library limits they are read against."""
