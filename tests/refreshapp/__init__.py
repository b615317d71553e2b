"""A test app for refresh-ahead: a row cache with ``refresh_ahead=`` and refreshed functions."""
