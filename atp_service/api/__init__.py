"""The HTTP API (contract section 4): app factory, routes, auth, problem responses."""
