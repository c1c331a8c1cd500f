"""FCM wake-ups (issue 17): one data message wakes a phone whose WebSocket session dropped."""
