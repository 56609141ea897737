"""platform-app: the managed-service control plane beside Craton's database nodes.

Identity (GitHub OAuth, passkeys), organisations with roles, and the fleet of registered
Craton clusters, kept as an immutable event history in NATS JetStream and projected into
SQLite read models. Nothing else in Craton imports this package; it imports only
``craton.core`` and ``craton.client`` pieces. See docs/PLATFORM.md.
"""
