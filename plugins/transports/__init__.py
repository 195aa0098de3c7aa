"""The bundled transports: ``pickup`` (write into a folder), ``smtp`` (a server list), ``mx`` (direct, with smart host)."""
