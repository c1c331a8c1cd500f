"""Devices: pairing codes, device credentials, online state, the device list."""
